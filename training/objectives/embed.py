"""objective=embed: fine-tune the sentence embedder on labelled texts (sentence-transformers'
SentenceTransformerTrainer), so that texts with one label land together.

    python cli.py train --config embed_chatterbot          # MiniLM on ChatterBot's 21 categories
    python cli.py topics --corpus chatterbot --embedder RUN   # then use it like the packaged one

Rows: labelled texts, a text column (text, sentence or question) and a label column (label,
category or speaker), mapped with `columns` when named otherwise ('text=Q,label=topic'); or
pairs, `anchor` and `positive` (and optionally `negative`: a hard negative). Pairs train with
multiple-negatives ranking loss: each anchor is pulled towards its positive and away from every
other positive in the batch (and its negative). The labels become training
signal through batch-all triplet loss: in each batch, every (anchor, positive, negative) with
the anchor and positive sharing a label and the negative another is pulled together and pushed
apart by a margin, and the batch sampler puts at least two texts of each of several labels in
every batch. It needs labels only (no pairs to mine), uses every valid triplet of a batch, and
trains exactly what clustering and a classifier read: same-label texts nearer than others.
(Multiple-negatives ranking would need anchor/positive pairs and would push apart other texts
of the same label that share a batch.) The whole embedder trains (22M parameters for MiniLM),
or with adapter=lora only LoRA matrices on its layers (peft, `lora_target`; 'all-linear' means
the attention's query and value here); checkpoints then hold the LoRA weights alone, and the
finished run merges them, so adapter/ is a whole embedder either way.

Held out, before and after, for labels: the accuracy of the Embeddings tab's classifier
(logistic regression) fitted on the training rows' embeddings; NMI and ARI of KMeans with as
many clusters as labels; the silhouette of the labels; the report keeps both 2-D maps of the
held-out rows. For pairs: how often a held-out anchor's nearest held-out positive is its own
(top-1), and the mean reciprocal rank. The run folder's adapter/ is a whole
sentence-transformers model.
"""
from __future__ import annotations

import json

from core.data.rows import DataError
from core.data.formats import Preview, cell_text
from core.errors import LabError
from core.runs import EMBEDDER, Measure
from training.model_setup import common_args
from training.objective import Objective

TEXT_COLUMNS = ("text", "sentence", "question")
PAIR_COLUMNS = ("anchor", "positive", "negative")
PAIR_ROLES = {"anchor": "the text", "positive": "made nearer", "negative": "pushed away"}
LABEL_COLUMNS = ("label", "category", "speaker")


class Embed(Objective):
    name = "embed"
    help = "embed: fine-tune the sentence embedder so that texts with one label land together"
    raw_text = True
    kind = EMBEDDER

    def check(self, cfg) -> None:
        if cfg.adapter not in ("full", "lora"):
            raise LabError("objective=embed trains the whole embedder or LoRA on it: set adapter=full or lora.")
        if cfg.batch_size < 4 or cfg.batch_size % 2:
            raise LabError(f"objective=embed needs an even batch_size of at least 4 (it is {cfg.batch_size}): "
                           "each batch holds pairs of texts per label.")

    def check_columns(self, column_names) -> None:
        if not {"anchor", "positive"} <= set(column_names):
            labelled_columns(column_names)

    def tokenizer(self, cfg):
        return None  # the sentence-transformers model brings its own

    def examples(self, rows, tokenizer, cfg, first_row: int = 1):
        """sentence/label rows, the labels as numbers in sorted order of their names. A text that
        repeats is kept once (its first label), so no held-out text is also a training text."""
        from datasets import Dataset

        if {"anchor", "positive"} <= set(rows.column_names):
            columns = [c for c in PAIR_COLUMNS if c in rows.column_names]
            return Dataset.from_dict({c: [cell_text(row, c, n) for n, row in enumerate(rows, first_row)]
                                      for c in columns})
        text, label = labelled_columns(rows.column_names)
        labelled = {}
        for number, row in enumerate(rows, first_row):
            labelled.setdefault(cell_text(row, text, number), cell_text(row, label, number))
        texts, names = list(labelled), list(labelled.values())
        classes = sorted(set(names))
        if len(classes) < 2 and len(rows) > 1:
            raise DataError(f"objective=embed needs at least 2 labels in '{label}'; the data has {len(classes)}.")
        return Dataset.from_dict({"sentence": texts, "label": [classes.index(name) for name in names]})

    def preview(self, rows, row: int, tokenizer, cfg) -> Preview:
        from transformers import AutoTokenizer

        from core.explore.embedders import embedder_source

        if {"anchor", "positive"} <= set(rows.column_names):
            shown = [(cell_text(rows[row], c, row + 1) + "\n", f"{c}: {PAIR_ROLES[c]}")
                     for c in PAIR_COLUMNS if c in rows.column_names]
            return Preview(shown, 0, 0, "The embedder learns to place each anchor nearest its own positive.")
        text, label = labelled_columns(rows.column_names)
        sentence, name = cell_text(rows[row], text, row + 1), cell_text(rows[row], label, row + 1)
        tokens = len(AutoTokenizer.from_pretrained(embedder_source(cfg.model))(sentence)["input_ids"])
        return Preview([(sentence, f"label: {name}")], tokens, tokens,
                       "The embedder learns to place this text near the others labelled "
                       f"'{name}' and away from the rest (batch-all triplet loss).")

    def trainer(self, cfg, run, tokenizer, train_set, eval_set, callbacks):
        from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
        from sentence_transformers import SentenceTransformerTrainingArguments as Arguments
        from sentence_transformers.base.sampler import BatchSamplers
        from sentence_transformers.sentence_transformer.losses import BatchAllTripletLoss, MultipleNegativesRankingLoss

        from core.explore.embedders import embedder_source
        from training.objectives.embed_lora import LoraEmbedderTrainer, with_lora

        model = SentenceTransformer(embedder_source(cfg.model), trust_remote_code=False)
        if cfg.adapter == "lora":
            model[0].model = with_lora(model[0].model, cfg)
        pairs = "positive" in train_set.column_names
        sampler = BatchSamplers.NO_DUPLICATES if pairs else BatchSamplers.GROUP_BY_LABEL
        args = Arguments(**common_args(cfg, run), batch_sampler=sampler)
        loss = MultipleNegativesRankingLoss(model) if pairs else BatchAllTripletLoss(model)
        kind = LoraEmbedderTrainer if cfg.adapter == "lora" else SentenceTransformerTrainer
        return kind(model=model, args=args, train_dataset=train_set, eval_dataset=eval_set,
                    loss=loss, callbacks=list(callbacks))

    def ready_to_save(self, trainer) -> None:
        if hasattr(trainer.model[0].model, "merge_and_unload"):
            trainer.model[0].model = trainer.model[0].model.merge_and_unload()

    def held_out(self, trainer, cfg, tokenizer) -> dict:
        from core.explore.embeddings import retrieval_scores, separation_scores

        train, held = trainer.train_dataset, trainer.eval_dataset
        if "positive" in held.column_names:
            return retrieval_scores(encode(trainer.model, held["anchor"]), encode(trainer.model, held["positive"]))
        return separation_scores(encode(trainer.model, train["sentence"]), train["label"],
                                 encode(trainer.model, held["sentence"]), held["label"])

    def measures(self, before: dict, after: dict) -> list[Measure]:
        labels = {"top1": "held-out anchors whose nearest positive is their own", "mrr": "held-out mean reciprocal rank",
                  "accuracy": "held-out classification accuracy (logistic regression)",
                  "nmi": "held-out clusters against the labels, NMI", "ari": "held-out clusters against the labels, ARI",
                  "silhouette": "held-out silhouette of the labels (cosine)"}
        return [Measure(label, before.get(key), after.get(key), "higher") for key, label in labels.items()
                if key in after or key in before]

    def report(self, cfg, run, eval_set) -> bool:
        """Both 2-D maps of the held-out rows (PCA, coloured by label), base and tuned, in the
        run's report; the Train tab and the model card show them."""
        from sentence_transformers import SentenceTransformer

        from core.explore.embedders import embedder_source
        from core.explore.embeddings import project

        if eval_set is None or "positive" in eval_set.column_names:
            return False
        texts, labels = list(eval_set["sentence"]), list(eval_set["label"])
        maps = {}
        for side, source in (("base", embedder_source(cfg.model)), ("tuned", str(run.adapter))):
            points = project(encode(SentenceTransformer(source, trust_remote_code=False), texts), "pca")
            maps[side] = [[round(float(x), 4), round(float(y), 4)] for x, y in points]
        run.report_json.write_text(json.dumps({"texts": texts, "labels": labels, **maps}))
        run.report_md.write_text(f"#### Before/after: the held-out rows of {cfg.dataset}, embedded by the base "
                                 "and the tuned embedder (2-D PCA maps in the Result panel)\n")
        return True


def labelled_columns(columns) -> tuple[str, str]:
    """(text column, label column) of labelled rows, or a one-line error naming what is there."""
    text = next((c for c in TEXT_COLUMNS if c in columns), None)
    label = next((c for c in LABEL_COLUMNS if c in columns), None)
    if text is None or label is None:
        raise DataError(f"objective=embed needs a text column ({', '.join(TEXT_COLUMNS)}) and a label column "
                        f"({', '.join(LABEL_COLUMNS)}); this data has {', '.join(columns)}. Map them, e.g. "
                        "'text=Q,label=topic'.")
    return text, label


def encode(model, texts):
    return model.encode(list(texts), batch_size=64, normalize_embeddings=True, show_progress_bar=False)


OBJECTIVE = Embed()

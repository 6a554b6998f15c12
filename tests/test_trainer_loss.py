"""The engine's compact loss (training.trainer) equals the model's own cross-entropy: only the
trained (row, position) pairs go through the LM head, yet the loss and gradients are the same.
Its length-grouped batches come in an order set by the seed and the epoch alone."""
from __future__ import annotations

import torch


def make_trainer(model_dir, tmp_path, rows=None, **settings):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig

    from training.trainer import LabSFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    rows = Dataset.from_list(rows or [{"prompt": [{"role": "user", "content": "hi"}],
                                       "completion": [{"role": "assistant", "content": "hello"}]}])
    args = SFTConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", max_length=64, **settings)
    return LabSFTTrainer(model=model, args=args, train_dataset=rows, processing_class=tokenizer), model


def test_compact_loss_equals_the_models_own_loss(tiny_model_dir, tmp_path):
    trainer, model = make_trainer(tiny_model_dir, tmp_path)
    torch.manual_seed(0)
    ids = torch.randint(5, 1000, (3, 12))
    mask = torch.ones_like(ids)
    mask[1, 9:] = mask[2, 6:] = 0  # right padding of different lengths
    labels = ids.clone()
    labels[mask == 0] = -100
    labels[0, :4] = labels[1, :7] = labels[2, :2] = -100  # prompts of different lengths
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}

    model.zero_grad()
    ours = trainer.compute_loss(model, batch)
    ours.backward()
    our_grad = model.model.layers[0].mlp.down_proj.weight.grad.clone()
    model.zero_grad()
    reference = model(**batch).loss
    reference.backward()
    assert torch.allclose(ours, reference, atol=1e-5), (ours.item(), reference.item())
    assert torch.allclose(our_grad, model.model.layers[0].mlp.down_proj.weight.grad, atol=1e-6)
    head = model.get_output_embeddings()
    assert not head._forward_pre_hooks, "the hook must not outlive the call"


def test_length_grouped_order_is_the_seeds_and_epochs_alone(tiny_model_dir, tmp_path):
    """The stock sampler drew its order from torch's global generator, which an evaluation before
    training had moved on, and a resumed run (which skips that evaluation) had not: the resume
    skipped the trained batches of another order and trained on other rows."""
    rows = [{"prompt": [{"role": "user", "content": "hi " * (n % 7)}],
             "completion": [{"role": "assistant", "content": "ok " * (n % 5)}]} for n in range(40)]
    trainer, _ = make_trainer(tiny_model_dir, tmp_path, rows, train_sampling_strategy="group_by_length",
                              per_device_train_batch_size=4, seed=7)

    def order(global_seed: int, epoch: int) -> list[int]:
        torch.manual_seed(global_seed)
        sampler = trainer._get_train_sampler()
        sampler.set_epoch(epoch)
        return list(sampler)

    first = order(0, 0)
    assert sorted(first) == list(range(40))
    assert order(1, 0) == first, "the global generator's state changed the order"
    assert order(0, 1) != first, "each epoch gets its own order"
    other_seed, _ = make_trainer(tiny_model_dir, tmp_path, rows, train_sampling_strategy="group_by_length",
                                 per_device_train_batch_size=4, seed=8)
    assert list(other_seed._get_train_sampler()) != first

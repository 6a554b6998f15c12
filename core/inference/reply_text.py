"""A reply's text as its tokens arrive, at the same small cost for every token.

    used by core.inference.chat (a single pane's streamer), .compare and .running_batch (each
    row of a batch); tests/test_reply_text.py checks it

Decoding the whole answer again for each new token, as transformers' TextIteratorStreamer does
(back to the last newline) and as each row of a batch did, costs more the longer the answer, and
it ran on the thread that decodes (a single pane's streamer; every row of the running batch).
`ReplyText` takes tokenizers' own incremental decoder (`DecodeStream`), which keeps only the
few tokens a character or a word's leading space may still need: on SmolLM2, 1 us a token
against 17 us on average over a 128-token answer, and a single pane's 128-token reply on the
compiled step came 1.03-1.05x as fast (the 2-core EPYC, the two taking turns in one process).
Where the tokenizer has no `tokenizers` backend, or cleans up spaces after decoding (which looks
at the whole text), each token decodes the whole answer, as before. Either way, a text in
progress never ends in half a character, and the text when the reply ends is the whole answer
decoded once: exactly `tokenizer.decode`'s.
"""
from __future__ import annotations

import queue

from tokenizers.decoders import DecodeStream


class ReplyText:
    """The text of one answer so far (`text`), from its tokens, given one at a time."""

    def __init__(self, tokenizer):
        self.tokenizer, self.tokens, self.text = tokenizer, [], ""
        backend = getattr(tokenizer, "backend_tokenizer", None)
        incremental = backend is not None and not getattr(tokenizer, "clean_up_tokenization_spaces", False)
        self._backend, self._stream = backend, DecodeStream(skip_special_tokens=True) if incremental else None

    def add(self, token: int) -> bool:
        """Take the answer's next token; return whether the text grew."""
        self.tokens.append(token)
        if self._stream is not None:
            piece = self._stream.step(self._backend, token)  # None until a character is whole
            self.text += piece or ""
            return bool(piece)
        whole = self.tokenizer.decode(self.tokens, skip_special_tokens=True).removesuffix("\ufffd")
        grew, self.text = whole != self.text, whole
        return grew

    def finish(self) -> str:
        """The whole answer decoded once, as `tokenizer.decode` gives it: the text at the end."""
        self.text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        return self.text


class TextStreamer:
    """A `generate` streamer for one row: iterate it for (the text so far, its token count), each
    time the text grows. The first `put` (the prompt, as `generate` passes it) is skipped;
    `finish()` gives the final text."""

    def __init__(self, tokenizer):
        self.answer, self._texts, self._prompt_seen = ReplyText(tokenizer), queue.Queue(), False

    def put(self, value) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        for token in value.reshape(-1).tolist():
            if self.answer.add(token):
                self._texts.put((self.answer.text, len(self.answer.tokens)))

    def end(self) -> None:
        self._texts.put(None)

    def __iter__(self):
        return iter(self._texts.get, None)

    def finish(self) -> str:
        return self.answer.finish()

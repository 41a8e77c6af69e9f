"""Incremental detokenization: each new token costs a decode of a few tokens, not of all.

Decoding a stream's whole output again at every step makes a long stream cost O(n²).
As vLLM's detokenizer does, only a short window is decoded: the tokens from
`prefix_offset` (already shown) and those after `read_offset` (not yet shown). The new
text is what the window decodes to beyond its already-shown part, so a token that a
tokenizer renders together with its neighbour (a leading space, a multi-byte character
split over tokens) still comes out right. Text that ends in an unfinished character
(U+FFFD) waits for the next token.
"""

from collections.abc import Callable

UNFINISHED = "\ufffd"


class IncrementalDetokenizer:
    def __init__(self, decode: Callable[[list[int]], str]) -> None:
        self.decode = decode
        self.text = ""
        self.prefix_offset = 0
        self.read_offset = 0

    def update(self, ids: list[int]) -> str:
        """The text that `ids` (all the tokens so far) add to `self.text`, and add it."""
        shown = self.decode(ids[self.prefix_offset: self.read_offset])
        window = self.decode(ids[self.prefix_offset:])
        if len(window) <= len(shown) or window.endswith(UNFINISHED):
            return ""
        delta = window[len(shown):]
        self.prefix_offset, self.read_offset = self.read_offset, len(ids)
        self.text += delta
        return delta

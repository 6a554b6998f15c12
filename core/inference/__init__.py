"""Loading models and generating from them: chat, Compare's batched decode, the fast int8 path."""

"""The Hugging Face Hub: datasets and adapters by id, search, and publishing models and Spaces."""

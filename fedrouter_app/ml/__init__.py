"""The learning core every method shares: training, evaluation, prompt passes, embeddings, clustering."""

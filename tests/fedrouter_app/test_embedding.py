"""Sentence embeddings: batching never changes a text's embedding."""

import numpy as np

from fedrouter_app.data.synthetic import make_examples
from fedrouter_app.embedding import embed_texts


def test_length_sorted_batches_give_every_text_its_own_embedding(adapter_model):
    texts = [
        e.instruction for task in ("copy", "summarize", "capital") for e in make_examples(0, task, "test", range(5))
    ]
    one_by_one = np.stack([embed_texts(adapter_model, [t], batch_size=1)[0] for t in texts])
    consecutive = embed_texts(adapter_model, texts, batch_size=4, by_length=False)
    sorted_batches = embed_texts(adapter_model, texts, batch_size=4, by_length=True)
    np.testing.assert_allclose(sorted_batches, one_by_one, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(consecutive, one_by_one, rtol=1e-4, atol=1e-5)
    assert len({round(float(v), 4) for v in sorted_batches[:, 0]}) > 3

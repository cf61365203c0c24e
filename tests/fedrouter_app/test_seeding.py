from fedrouter_app.seeding import derive_seed, numpy_rng, python_rng, torch_generator


def test_same_parts_same_seed_and_draws():
    assert derive_seed(0, "train", 3, 1) == derive_seed(0, "train", 3, 1)
    assert python_rng(1, "x").random() == python_rng(1, "x").random()
    assert numpy_rng(1, "x").integers(1 << 30) == numpy_rng(1, "x").integers(1 << 30)
    assert torch_generator(1, "x").seed() is not None


def test_any_part_changes_the_seed():
    base = derive_seed(0, "train", 3, 1)
    assert (
        len(
            {
                base,
                derive_seed(1, "train", 3, 1),
                derive_seed(0, "eval", 3, 1),
                derive_seed(0, "train", 4, 1),
                derive_seed(0, "train", 3, 2),
            }
        )
        == 5
    )


def test_parts_are_not_concatenated_ambiguously():
    assert derive_seed(1, 23) != derive_seed(12, 3)
    assert 0 <= derive_seed("a") < 2**63

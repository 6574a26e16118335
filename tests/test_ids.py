from taskmeter import ids
from taskmeter.ids import IdGenerator


def test_ids_are_short_typeable_sorted_and_unique():
    generator = IdGenerator()
    made = [generator.new() for _ in range(20000)]
    assert len(set(made)) == len(made)
    assert made == sorted(made)
    assert all(len(i) == ids.LENGTH == 12 and set(i) <= set(ids.ALPHABET) for i in made)


def test_two_generators_rarely_collide():
    first, second = IdGenerator(), IdGenerator()
    a = {first.new() for _ in range(5000)}
    b = {second.new() for _ in range(5000)}
    assert len(a & b) <= 1


def test_prefixes_are_normalised_like_crockford():
    assert ids.normalise_prefix(" 0O1iL ") == "00111"
    assert ids.is_valid_prefix("01kb")
    assert not ids.is_valid_prefix("01u")
    assert not ids.is_valid_prefix("")

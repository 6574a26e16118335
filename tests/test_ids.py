from hypothesis import given
from hypothesis import strategies as st

from taskmeter import ids
from taskmeter.ids import IdGenerator


def test_ids_are_short_typeable_sorted_and_unique():
    generator = IdGenerator()
    made = [generator.new() for _ in range(20000)]
    assert len(set(made)) == len(made)
    assert made == sorted(made)
    assert all(len(i) == ids.LENGTH == 13 and set(i) <= set(ids.ALPHABET) for i in made)
    assert all(ids.prefix_problem(i) is None for i in made)


def test_two_generators_rarely_collide():
    first, second = IdGenerator(), IdGenerator()
    a = {first.new() for _ in range(5000)}
    b = {second.new() for _ in range(5000)}
    assert len(a & b) <= 1


def test_prefixes_are_normalised_like_crockford():
    assert ids.normalise_prefix(" 0O1iL ") == "00111"
    assert ids.prefix_problem("01kb2c") is None
    assert "letters and digits" in ids.prefix_problem("01u000")
    assert "letters and digits" in ids.prefix_problem("")
    assert "at least 6" in ids.prefix_problem("01kb2")


_ID = st.text(ids.ALPHABET, min_size=ids.BODY_LENGTH, max_size=ids.BODY_LENGTH).map(lambda body: body + ids.check_char(body))


@given(_ID, st.integers(0, ids.LENGTH - 1), st.sampled_from(ids.ALPHABET))
def test_every_one_character_typo_fails_the_check(made, position, replacement):
    typo = made[:position] + replacement + made[position + 1 :]
    assert (ids.prefix_problem(typo) is None) == (typo == made)


def test_legacy_ids_without_a_check_character_stay_valid():
    assert ids.prefix_problem("05j6e2pw21jh") is None

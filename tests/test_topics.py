"""Topics, the wildcard pattern table, and the trie (property-based against the reference)."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flamigo_actors import Topic, TopicError, matches
from flamigo_actors.core.topics import TopicTrie

# Small alphabets make collisions (and so real matches) frequent.
segment = st.sampled_from(["a", "b", "c", "users", "42"])
topic_st = st.lists(segment, min_size=1, max_size=5).map("/".join)
pattern_st = st.lists(st.one_of(segment, st.just("*")), min_size=1, max_size=5).map("/".join)


@pytest.mark.parametrize(
    ("pattern", "topic", "expected"),
    [
        ("users/42", "users/42", True),
        ("users/42", "users", False),
        ("users/42", "users/42/profile", False),
        ("users/*", "users/42", True),
        ("users/*", "users/42/profile", True),
        ("users/*", "users", False),
        ("a/*/c", "a/b/c", True),
        ("a/*/c", "a/c", False),
        ("a/*/c", "a/b/b/c", False),
        ("*", "users", True),
        ("*", "users/42/profile", True),
        ("*/42", "users/42", True),
        ("*/42", "users/42/x", False),
    ],
)
def test_pattern_table(pattern: str, topic: str, expected: bool) -> None:
    assert matches(pattern, topic) is expected
    trie: TopicTrie[str] = TopicTrie()
    trie.add(pattern, "s")
    assert (trie.match(topic) == {"s": None}) is expected


def test_topics_from_parts_and_strings() -> None:
    assert Topic.of("users", 42, "profile") == "users/42/profile"
    assert Topic("users/42").segments == ("users", "42")
    assert Topic("users/*").is_pattern and not Topic("users/42").is_pattern
    for bad in ["", "/users", "users/", "a//b"]:
        with pytest.raises(TopicError):
            Topic(bad)
    with pytest.raises(TopicError, match="contains '/'"):
        Topic.of("users", "4/2")
    with pytest.raises(TopicError):
        Topic.of()
    with pytest.raises(TopicError):
        Topic.of("users", "")
    with pytest.raises(TopicError):
        Topic(42)  # type: ignore[arg-type]


@settings(max_examples=500)
@given(st.lists(pattern_st, max_size=12), topic_st)
def test_trie_agrees_with_reference(patterns: list[str], topic: str) -> None:
    trie: TopicTrie[int] = TopicTrie()
    for i, pattern in enumerate(patterns):
        trie.add(pattern, i)
    expected = {i for i, p in enumerate(patterns) if matches(p, topic)}
    assert set(trie.match(topic)) == expected


@settings(max_examples=300)
@given(st.lists(st.tuples(pattern_st, st.integers(0, 5)), max_size=20), st.data())
def test_removing_everything_leaves_an_empty_trie(entries: list[tuple[str, int]], data: st.DataObject) -> None:
    trie: TopicTrie[int] = TopicTrie()
    for pattern, sub in entries:
        trie.add(pattern, sub)
    unique = set(entries)
    assert len(trie) == len(unique)
    order = data.draw(st.permutations(sorted(unique)))
    for pattern, sub in order:
        assert trie.remove(pattern, sub)
        assert not trie.remove(pattern, sub)
    assert len(trie) == 0 and trie.node_count() == 0


@settings(max_examples=200)
@given(pattern_st, topic_st)
def test_lone_and_trailing_star_rules(pattern: str, topic: str) -> None:
    # A pattern ending in '*' never matches a topic of its own prefix length.
    if pattern.endswith("*"):
        prefix_len = len(pattern.split("/")) - 1
        if len(topic.split("/")) == prefix_len:
            assert not matches(pattern, topic)
    assert matches("*", topic)

"""Which topic settings keep acknowledged records, and what start does about them."""

import pytest

from turnout.kafka.durability import (
    DurabilitySettings,
    TopicPolicy,
    TopicState,
    policy_for,
    startup_verdict,
    unsafe_reasons,
)


@pytest.mark.parametrize(
    ("brokers", "setting", "rf", "isr"),
    [(1, 0, 1, 1), (2, 0, 2, 1), (3, 0, 3, 2), (6, 0, 3, 2), (5, 5, 5, 4), (3, 1, 1, 1)],
)
def test_policy_defaults_to_min_3_brokers_with_min_isr_one_less(brokers, setting, rf, isr):
    """RF is min(3, brokers) unless set; min.insync.replicas is RF - 1, at least 1."""
    assert policy_for(brokers, setting) == TopicPolicy(rf, isr)


def test_policy_refuses_more_replicas_than_brokers():
    """A replication factor above the broker count names both numbers and the fix."""
    with pytest.raises(
        ValueError, match="TURNOUT_REPLICATION_FACTOR=3 but the cluster has 1 broker;"
    ):
        policy_for(1, 3)


def test_new_topics_never_allow_unclean_election_and_keep_their_own_configs():
    """The caller's configs (cleanup, retention) sit on top of ours."""
    configs = TopicPolicy(3, 2).configs({"cleanup.policy": "compact", "min.insync.replicas": "3"})
    assert configs == {
        "min.insync.replicas": "3",
        "unclean.leader.election.enable": "false",
        "cleanup.policy": "compact",
    }


@pytest.mark.parametrize(
    ("rf", "configs", "brokers", "unsafe"),
    [
        (1, {}, 1, False),  # one broker: nothing better is possible
        (1, {}, 3, True),
        (2, {}, 3, False),
        (3, {"unclean.leader.election.enable": "true"}, 3, True),
        (3, {"unclean.leader.election.enable": "TRUE"}, 3, True),
        (3, {"unclean.leader.election.enable": "false"}, 3, False),
    ],
)
def test_unsafe_reasons(rf, configs, brokers, unsafe):
    """RF 1 on a multi-broker cluster and unclean leader election are unsafe."""
    assert bool(unsafe_reasons(TopicState("t", rf, configs), brokers)) is unsafe


def test_an_unsafe_request_topic_is_refused_in_one_line_naming_topic_reason_and_fix():
    """The refusal names the topic, why, and both ways out."""
    verdict = startup_verdict(
        [TopicState("turnout.requests", 3, {}), TopicState("turnout.replies.a", 1, {})],
        3,
        allow_unsafe=False,
    )
    assert not verdict.start
    assert "\n" not in verdict.line
    assert verdict.line.startswith("unsafe topic settings: turnout.replies.a: replication factor 1")
    assert "TURNOUT_ALLOW_UNSAFE_TOPICS=1" in verdict.line
    assert "turnout.requests" not in verdict.line


def test_allow_unsafe_starts_with_a_warning():
    """TURNOUT_ALLOW_UNSAFE_TOPICS=1 starts, and still says what is unsafe."""
    verdict = startup_verdict([TopicState("r", 1, {})], 3, allow_unsafe=True)
    assert verdict.start
    assert "r: replication factor 1" in verdict.line


def test_durability_settings_from_env():
    """Both settings come from their variables and are validated."""
    s = DurabilitySettings.from_env(
        {"TURNOUT_REPLICATION_FACTOR": "2", "TURNOUT_ALLOW_UNSAFE_TOPICS": "1"}
    )
    assert (s.replication_factor, s.allow_unsafe_topics) == (2, True)
    with pytest.raises(ValueError, match="TURNOUT_REPLICATION_FACTOR must be 0"):
        DurabilitySettings.from_env({"TURNOUT_REPLICATION_FACTOR": "-1"})

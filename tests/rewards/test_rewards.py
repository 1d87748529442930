import math

import pytest
import torch
import torch.nn.functional as F

from grace.rewards import compute_rewards, within_group_std

Q, P, N = 0, 1, 2


def unit(*values):
    return F.normalize(torch.tensor(values, dtype=torch.float32), dim=-1)


def random_batch(groups=4, k=(3, 4, 2), mode="supervised", seed=0, dim=16):
    """k rollouts per (group, role); random unit embeddings."""
    roles = (Q, P, N) if mode == "supervised" else (Q, P)
    group, role = [], []
    for g in range(groups):
        for r in roles:
            group += [g] * k[r]
            role += [r] * k[r]
    generator = torch.Generator().manual_seed(seed)
    embeddings = F.normalize(torch.randn(len(group), dim, generator=generator), dim=-1)
    return embeddings, torch.tensor(group), torch.tensor(role), torch.zeros(len(group), dtype=torch.bool)


# ---------------------------------------------------------------- plain-loop references


def cos(a, b):
    return float(torch.dot(a, b))


def mean_of(vectors):
    return F.normalize(torch.stack(vectors).mean(0), dim=0)


def loop_reference(e, group, role, truncated, variant, mode, tau=0.1, wc=0.2, wx=0.2):
    rows = range(len(e))
    groups = sorted(set(group.tolist()))
    members = lambda g, r: [i for i in rows if group[i] == g and role[i] == r]  # noqa: E731
    mean = {(g, r): mean_of([e[i] for i in members(g, r)]) for g in groups for r in (Q, P, N) if members(g, r)}
    totals, terms = [], {}

    def add(name, i, value):
        terms.setdefault(name, [0.0] * len(e))[i] = value

    for i in rows:
        g, r = int(group[i]), int(role[i])
        same = [j for j in members(g, r) if j != i]
        cluster = sum(cos(e[i], e[j]) for j in same) / len(same) if same else 0.0
        others = [h for h in groups if h != g]
        if variant == "paper":
            if r != P:
                for name in ("positive", "negative", "cluster", "cross") if mode == "supervised" else ("positive", "cluster", "cross"):
                    add(name, i, 0.0)
                totals.append(0.0)
                continue
            add("positive", i, cos(mean[g, Q], e[i]) / tau)
            if mode == "supervised":
                add("negative", i, -cos(mean[g, Q], mean[g, N]) / tau)
                cross = [max(cos(mean[g, Q], e[k]) for k in members(h, P)) for h in others]
            else:
                cross = [cos(e[i], mean[h, Q]) for h in others]
            add("cluster", i, wc * cluster / tau)
            add("cross", i, -wx * (sum(cross) / len(cross) if cross else 0.0) / tau)
            total = sum(terms[name][i] for name in terms)
            totals.append(-1.0 if truncated[i] else total)
        else:
            if r == Q:
                candidates = [mean[h, P] for h in groups] + ([mean[h, N] for h in groups] if mode == "supervised" else [])
                true = mean[g, P]
            else:
                candidates, true = [mean[h, Q] for h in groups], mean[g, Q]
            if r == N:
                score = -math.log1p(math.exp((cos(mean[g, Q], e[i]) - cos(mean[g, Q], mean[g, P])) / tau))
            else:
                score = cos(e[i], true) / tau - math.log(sum(math.exp(cos(e[i], c) / tau) for c in candidates))
            partner = P if r == Q else Q
            cross = [cos(e[i], mean[h, partner]) for h in others]
            add("contrastive", i, score)
            add("cluster", i, wc * cluster / tau)
            add("cross", i, -wx * (sum(cross) / len(cross) if cross else 0.0) / tau)
            totals.append(sum(terms[name][i] for name in terms))
    if variant == "contrastive":
        shift = max(totals) - min(totals) + 1.0
        totals = [t - shift if truncated[i] else t for i, t in enumerate(totals)]
    return torch.tensor(totals), {name: torch.tensor(values) for name, values in terms.items()}


@pytest.mark.parametrize("variant", ["paper", "contrastive"])
@pytest.mark.parametrize("mode", ["supervised", "unsupervised"])
def test_vectorised_rewards_equal_the_loop_reference(variant, mode):
    e, group, role, truncated = random_batch(mode=mode, seed=3)
    truncated[[1, 5]] = True
    group = group * 7 + 100  # arbitrary group ids, not 0..G-1
    result = compute_rewards(e, group, role, truncated, variant=variant, mode=mode)
    total, terms = loop_reference(e, group, role, truncated, variant, mode)
    assert torch.allclose(result.total, total, atol=1e-5)
    assert result.terms.keys() == terms.keys()
    for name in terms:
        assert torch.allclose(result.terms[name], terms[name], atol=1e-5), name


def test_paper_supervised_matches_a_hand_computed_example():
    # Two groups in 2-D. Group 0: query (1,0), positives (1,0) and (0,1), negative (0,1).
    # Group 1: query (0,1), positives (0,1) and (1,0), negative (1,0).
    e = torch.stack([unit(1, 0), unit(1, 0), unit(0, 1), unit(0, 1), unit(0, 1), unit(0, 1), unit(1, 0), unit(1, 0)])
    group = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    role = torch.tensor([Q, P, P, N, Q, P, P, N])
    result = compute_rewards(e, group, role, torch.zeros(8, dtype=torch.bool), variant="paper", tau=0.1)
    # Positive (1,0) of group 0: cos(q,p)=1, cos(q,n)=0, cluster=cos(p,(0,1))=0,
    # cross = max over group 1's positives of cos(q0, .) = 1 -> R = 10 * (1 - 0 + 0 - 0.2) = 8.
    # Positive (0,1) of group 0: cos(q,p)=0 -> R = 10 * (0 - 0 + 0 - 0.2) = -2. Symmetric for group 1.
    assert torch.allclose(result.total, torch.tensor([0, 8, -2, 0, 0, 8, -2, 0], dtype=torch.float32))
    assert result.trained.tolist() == [False, True, True, False, False, True, True, False]
    assert torch.allclose(result.terms["cross"][1], torch.tensor(-2.0))


def test_paper_truncated_rollout_gets_minus_one():
    e, group, role, truncated = random_batch()
    positive = torch.nonzero(role == P).flatten()[0]
    truncated[positive] = True
    result = compute_rewards(e, group, role, truncated, variant="paper")
    assert result.total[positive] == -1.0


def test_paper_supervised_negative_and_cross_terms_train_nothing():
    e, group, role, truncated = random_batch(groups=5)
    result = compute_rewards(e, group, role, truncated, variant="paper", mode="supervised")
    spread = {name: within_group_std(value, group, result.trained) for name, value in result.terms.items()}
    assert spread["negative"] < 1e-6 and spread["cross"] < 1e-6
    assert spread["positive"] > 1e-2 and spread["cluster"] > 1e-3


@pytest.mark.parametrize("mode", ["supervised", "unsupervised"])
def test_contrastive_terms_all_vary_within_groups(mode):
    e, group, role, truncated = random_batch(mode=mode)
    result = compute_rewards(e, group, role, truncated, variant="contrastive", mode=mode)
    assert result.trained.all()
    key = group * 3 + role
    for name, value in result.terms.items():
        assert within_group_std(value, key, result.trained) > 1e-3, name


def test_moving_a_positive_closer_to_its_query_raises_its_reward():
    e, group, role, truncated = random_batch(dim=64)
    i = int(torch.nonzero((role == P) & (group == 1)).flatten()[0])
    query = F.normalize(e[(role == Q) & (group == 1)].mean(0), dim=0)
    before = compute_rewards(e, group, role, truncated).total[i]
    moved = e.clone()
    moved[i] = F.normalize(e[i] + 0.5 * query, dim=0)
    after = compute_rewards(moved, group, role, truncated).total[i]
    assert after > before


def test_contrastive_truncated_rollouts_rank_below_every_finished_one_and_keep_their_order():
    e, group, role, truncated = random_batch()
    raw = compute_rewards(e, group, role, truncated).total
    truncated[[0, 1, 2]] = True
    result = compute_rewards(e, group, role, truncated).total
    assert result[truncated].max() < result[~truncated].min()
    assert torch.equal(result[:3].argsort(), raw[:3].argsort())


@pytest.mark.parametrize("variant", ["paper", "contrastive"])
def test_without_the_truncation_rule_a_truncated_rollout_is_scored_by_its_embedding_alone(variant):
    e, group, role, truncated = random_batch()
    untruncated = compute_rewards(e, group, role, truncated, variant=variant).total
    truncated[[0, 1, 4, 5]] = True
    ruled = compute_rewards(e, group, role, truncated, variant=variant).total
    result = compute_rewards(e, group, role, truncated, variant=variant, rank_truncated_last=False)
    assert torch.equal(result.total, untruncated) and not torch.equal(ruled, untruncated)
    assert torch.allclose(result.total, sum(result.terms.values()), atol=1e-6)


def test_total_is_the_sum_of_terms_when_nothing_is_truncated():
    e, group, role, truncated = random_batch()
    for variant in ("paper", "contrastive"):
        result = compute_rewards(e, group, role, truncated, variant=variant)
        assert torch.allclose(result.total, sum(result.terms.values()), atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"variant": "dpo"}, "unknown reward variant"),
        ({"mode": "semi"}, "unknown mode"),
        ({"tau": -0.1}, "tau must be positive"),
        ({"tau": 0.0}, "tau must be positive"),
    ],
)
def test_bad_settings_are_rejected(kwargs, message):
    e, group, role, truncated = random_batch()
    with pytest.raises(ValueError, match=message):
        compute_rewards(e, group, role, truncated, **kwargs)


def test_missing_role_and_bad_shapes_are_rejected():
    e, group, role, truncated = random_batch()
    keep = role != N
    with pytest.raises(ValueError, match="need a negative rollout in every group"):
        compute_rewards(e[keep], group[keep], role[keep], truncated[keep], mode="supervised")
    with pytest.raises(ValueError, match="not allowed in unsupervised mode"):
        compute_rewards(e, group, role, truncated, mode="unsupervised")
    with pytest.raises(ValueError, match="group must have shape"):
        compute_rewards(e, group[:-1], role, truncated)
    with pytest.raises(ValueError, match="bool"):
        compute_rewards(e, group, role, truncated.long())


def test_within_group_std_is_zero_for_constant_groups():
    values = torch.tensor([1.0, 1.0, 5.0, 5.0])
    assert within_group_std(values, torch.tensor([0, 0, 1, 1])) == 0
    assert torch.isclose(within_group_std(values, torch.tensor([0, 1, 0, 1])), torch.tensor(2.0))


@pytest.mark.parametrize("variant", ["paper", "contrastive"])
def test_unnormalised_embeddings_give_the_rewards_of_their_unit_vectors(variant):
    e, group, role, truncated = random_batch(seed=5)
    scale = torch.rand(len(e), 1, generator=torch.Generator().manual_seed(1)) * 10 + 0.1
    scaled = compute_rewards(e * scale, group, role, truncated, variant=variant)
    unit_rewards = compute_rewards(e, group, role, truncated, variant=variant)
    assert torch.allclose(scaled.total, unit_rewards.total, atol=1e-5)
    for name in unit_rewards.terms:
        assert torch.allclose(scaled.terms[name], unit_rewards.terms[name], atol=1e-5), name


def test_within_group_std_is_exactly_zero_for_constant_groups_whose_mean_rounds():
    # Six (or seven) copies of these float32 values sum to a total whose sixth (seventh) is not the value again.
    values = torch.tensor([-1 / 3] * 6 + [-0.7] * 7, dtype=torch.float32)
    assert within_group_std(values, torch.tensor([0] * 6 + [1] * 7)) == 0

"""The learning code under test (issue 27): each script's copy of GAE and the PPO update, MILET's reward wiring
(Eq. 9-12), the weights of the CBVI loss (Eq. 8) and the ablation flags. A flipped policy-loss sign, a dropped loss
term or a flag that is ignored makes one of these fail; the 16-minute learning checks are not needed to see it."""
import numpy as np
import pytest
import torch
from gymnasium.wrappers.utils import RunningMeanStd

import milet_ppo_continuous as milet
import rl2_ppo_continuous as rl2
import varibad_ppo_continuous as varibad
from cbvi import CBVI

SCRIPTS = {"milet": milet, "varibad": varibad, "rl2": rl2}


class Core:
    """One script's PPO copy on a batch of n samples in that script's own shapes: flat (n, .) for MILET and VariBAD,
    n trials of one step (1, n, .) for RL2, whose update re-runs each trial's GRU from h = 0. No entropy bonus, one
    epoch of one minibatch unless the flags say otherwise."""

    def __init__(self, script, n, flags=(), same_input=False):
        torch.manual_seed(0)
        self.script, self.module, self.n = script, SCRIPTS[script], n
        entropy = [] if script == "milet" else ["--ent-coef", "0"]  # MILET passes each policy's coefficient
        self.args = self.module.parse_args(["--update-epochs", "1", "--num-minibatches", "1", *entropy, *flags])
        width = 3 + 2 + 3 if script == "rl2" else 3  # RL2: state, previous action, previous reward and two flags
        one = torch.randn(1, width)
        rows = one.expand(n, width).clone() if same_input else torch.randn(n, width)
        if script == "rl2":
            self.agent, self.inputs = rl2.RL2Agent(3, 2, self.args), rows.unsqueeze(0)
        else:
            self.agent, self.inputs = self.module.Agent(3, 2, (16,)), rows

    def shaped(self, values):  # a flat (n,) tensor in the script's batch shape
        return values.reshape(1, self.n) if self.script == "rl2" else values.reshape(self.n)

    @torch.no_grad()
    def act(self, actions=None):
        """(actions, log-probabilities, values) of the current policy on the batch, each flat over the n samples."""
        if self.script == "rl2":
            action, logprob, _, value, _ = self.agent(self.inputs, torch.zeros(self.n, self.args.gru_hidden_size),
                                                      None if actions is None else actions.unsqueeze(0))
            return action[0], logprob[0], value[0]
        return tuple(x for i, x in enumerate(self.agent.get_action_and_value(self.inputs, actions)) if i != 2)

    @torch.no_grad()
    def mean_action(self):
        if self.script == "rl2":
            return self.agent(self.inputs, torch.zeros(self.n, self.args.gru_hidden_size), deterministic=True)[0][0]
        return self.agent.get_action_and_value(self.inputs, deterministic=True)[0]

    def update(self, optimizer, actions, logprobs, advantages, returns, values):
        extra = (0.0,) if self.script == "milet" else ()
        batch = [self.shaped(x) for x in (logprobs, advantages, returns, values)]
        actions = actions.unsqueeze(0) if self.script == "rl2" else actions
        return self.module.ppo_update(self.agent, optimizer, self.inputs, actions, batch[0], batch[1], batch[2],
                                      batch[3], *extra, self.args, 1)

    def actor_parameters(self):
        return [p.detach().clone() for name, p in self.agent.named_parameters() if name.startswith("actor")]


@pytest.mark.parametrize("script", SCRIPTS)
def test_gae_is_the_discounted_sum_of_td_errors_with_nothing_bootstrapped_past_the_end(script):
    """A_t = sum_l (gamma lambda)^l delta_{t+l}, delta_t = r_t + gamma V_{t+1} - V_t with V_T = 0 (the segment ends:
    MILET's exploration episode, or the trial), and the returns are A + V; with lambda = 1 they are the plain
    discounted reward-to-go, whatever the values."""
    torch.manual_seed(0)
    rewards, values = torch.randn(7, 3), torch.randn(7, 3)
    gamma, lam = 0.9, 0.8
    next_values = torch.cat([values[1:], torch.zeros(1, 3)])
    deltas = rewards + gamma * next_values - values
    expected = torch.stack([sum((gamma * lam) ** (k - t) * deltas[k] for k in range(t, 7)) for t in range(7)])
    advantages, returns = SCRIPTS[script].gae(rewards, values, gamma, lam)
    torch.testing.assert_close(advantages, expected)
    torch.testing.assert_close(returns, expected + values)
    _, returns = SCRIPTS[script].gae(rewards, values, gamma, 1.0)
    reward_to_go = torch.stack([sum(gamma ** (k - t) * rewards[k] for k in range(t, 7)) for t in range(7)])
    torch.testing.assert_close(returns, reward_to_go)


def test_credit_exploration_runs_the_explorers_gae_through_the_exploitation_episode():
    """MILET's exploration part (the first H of T steps): by default its own GAE, which bootstraps nothing past step
    H; with --credit-exploration the whole trial's GAE cut to it, so that rewards of the exploitation episode reach
    the explorer's advantages (discounted), and nothing changes for the exploitation part."""
    torch.manual_seed(0)
    H, T, args = 3, 6, milet.Args(gamma=0.9, gae_lambda=0.8)
    rewards, values = torch.randn(T, 2), torch.randn(T, 2)
    explore, exploit = slice(0, H), slice(H, T)
    own = milet.segment_advantages(rewards, values, explore, args)
    for got, expected in zip(own, milet.gae(rewards[explore], values[explore], 0.9, 0.8)):
        torch.testing.assert_close(got, expected)
    credited = milet.segment_advantages(rewards, values, explore, args, through_trial=True)
    for got, expected in zip(credited, milet.gae(rewards, values, 0.9, 0.8)):
        torch.testing.assert_close(got, expected[explore])
    later = rewards.clone()
    later[H] += 1.0  # one more unit of reward at the first exploitation step
    moved = milet.segment_advantages(later, values, explore, args, through_trial=True)[0] - credited[0]
    torch.testing.assert_close(moved, torch.tensor([(0.9 * 0.8) ** (H - t) for t in range(H)])[:, None].expand(H, 2))
    torch.testing.assert_close(milet.segment_advantages(later, values, explore, args)[0], own[0])
    for through_trial in (False, True):  # the exploitation part is the end of the trial: the same either way
        torch.testing.assert_close(milet.segment_advantages(rewards, values, exploit, args, through_trial)[0],
                                   milet.gae(rewards[exploit], values[exploit], 0.9, 0.8)[0])


def test_authors_boundary_makes_the_end_of_exploration_a_time_limit():
    """--authors-boundary (the authors' bad_masks): the explorer's last step gets advantage 0 and return V(s_{H-1}),
    the step before bootstraps from V(s_{H-1}) instead of ending, and the last reward drops out; the exploitation
    part is unchanged."""
    torch.manual_seed(0)
    H, T, args = 4, 8, milet.Args(gamma=0.9, gae_lambda=0.8, authors_boundary=True)
    rewards, values = torch.randn(T, 2), torch.randn(T, 2)
    advantages, returns = milet.segment_advantages(rewards, values, slice(0, H), args, time_out=True)
    assert (advantages[-1] == 0).all()
    torch.testing.assert_close(returns[-1], values[H - 1])
    torch.testing.assert_close(advantages[H - 2], rewards[H - 2] + 0.9 * values[H - 1] - values[H - 2])
    later = rewards.clone()
    later[H - 1] += 5.0
    torch.testing.assert_close(milet.segment_advantages(later, values, slice(0, H), args, time_out=True)[0], advantages)
    for got, expected in zip(milet.segment_advantages(rewards, values, slice(H, T), args),
                             milet.gae(rewards[H:], values[H:], 0.9, 0.8)):
        torch.testing.assert_close(got, expected)


def test_authors_boundary_runs_the_return_normaliser_across_the_trial():
    """The running std divides by the discounted return restarted every episode by default, and run across the whole
    trial with --authors-boundary (as the authors' vec_normalize)."""
    H, rewards = 3, torch.tensor([[1.0], [2.0], [3.0], [4.0], [5.0], [6.0]])
    for authors_boundary, restarts in ((False, (0, 3)), (True, (0,))):
        args = milet.Args(episode_length=H, gamma=0.5, authors_boundary=authors_boundary)
        rms = RunningMeanStd(shape=())
        milet.shaped_rewards(rewards, None, rms, args, False)
        discounted = []
        for t in range(len(rewards)):
            discounted.append(rewards[t, 0].item() + (0.0 if t in restarts else 0.5 * discounted[-1]))
        np.testing.assert_allclose(rms.var, np.var(discounted), rtol=1e-4)


@pytest.mark.parametrize("script", SCRIPTS)
def test_one_update_makes_positive_advantage_actions_likelier_and_negative_ones_rarer(script):
    """Two samples of the same input, the mean action +- 0.5, advantages +1 and -1 (returns = values, so the value
    loss pulls nothing): one step raises the first action's log-probability and lowers the second's."""
    core = Core(script, 2, same_input=True)
    mean = core.mean_action()
    actions = torch.stack([mean[0] + 0.5, mean[1] - 0.5])
    _, logprobs, values = core.act(actions)
    core.update(torch.optim.SGD(core.agent.parameters(), lr=0.05), actions, logprobs, torch.tensor([1.0, -1.0]),
                values, values)
    _, new_logprobs, _ = core.act(actions)
    assert new_logprobs[0] > logprobs[0] + 1e-4 and new_logprobs[1] < logprobs[1] - 1e-4


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_the_ratio_clip_stops_the_policy_once_it_has_moved_past_the_clip(script, sign):
    """Rollout log-probabilities 1 below the current ones (ratio e > 1 + clip) with positive advantages, or 1 above
    (ratio 1/e < 1 - clip) with negative ones: the clipped surrogate has no gradient, so the actor does not move.
    At ratio 1 the same advantages move it."""
    for offset, moves in ((sign * 1.0, False), (0.0, True)):
        core = Core(script, 16, ["--no-norm-adv"])  # normalised, half the advantages would change sign
        actions, logprobs, values = core.act()
        before = core.actor_parameters()
        advantages = sign * (torch.rand(16) + 0.5)
        core.update(torch.optim.Adam(core.agent.parameters(), lr=1e-2), actions, logprobs - offset, advantages,
                    values, values)
        moved = sum((p - q).abs().sum().item() for p, q in zip(core.actor_parameters(), before))
        assert (moved > 1e-6) == moves, (offset, moved)


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("clip_vloss", [True, False])
def test_the_value_clip_bounds_the_value_step_only_when_asked(script, clip_vloss):
    """Stored values 0.2 above the critic's output and returns 10 below, zero advantages: the clipped branch (stored
    value - clip) is further from the returns than the critic's output, so the max picks it and it carries no
    gradient; the values do not move. --no-clip-vloss takes the plain loss, which lowers them towards the returns."""
    core = Core(script, 16, ["--clip-coef", "0.05"] + ([] if clip_vloss else ["--no-clip-vloss"]))
    actions, logprobs, values = core.act()
    core.update(torch.optim.SGD(core.agent.parameters(), lr=0.1), actions, logprobs, torch.zeros(16), values - 10.0,
                values + 0.2)
    _, _, new_values = core.act(actions)
    if clip_vloss:
        torch.testing.assert_close(new_values, values, rtol=0, atol=0)
    else:
        assert (new_values < values - 1e-3).all()


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("norm_adv", [True, False])
def test_advantages_are_normalised_per_minibatch_only_when_asked(script, norm_adv):
    """With advantage normalisation, advantages scaled by 10 and shifted by 3 give the same update; without it
    they do not."""
    results = []
    for scale, shift in ((1.0, 0.0), (10.0, 3.0)):
        core = Core(script, 16, [] if norm_adv else ["--no-norm-adv"])
        actions, logprobs, values = core.act()
        advantages = torch.randn(16, generator=torch.Generator().manual_seed(1))
        torch.manual_seed(2)
        core.update(torch.optim.SGD(core.agent.parameters(), lr=0.01), actions, logprobs, scale * advantages + shift,
                    values, values)
        results.append(torch.cat([p.flatten() for p in core.actor_parameters()]))
    assert torch.allclose(results[0], results[1], atol=1e-5) == norm_adv


def test_only_the_exploration_episode_earns_the_weighted_cluster_bonuses():
    """Eq. 9-12 in the loop's reward: every step gets the task reward over the running std of the per-episode
    discounted return (the running std updated with this batch), clipped to +-10; the exploration episode adds gamma_h(t) r_h + gamma_c(t) r_c, computed here
    from their definitions; the exploitation episode gets nothing more, and without pi_psi nobody does."""
    args = milet.parse_args(["--episode-length", "4", "--num-envs", "4", "--num-minibatches", "2"])
    H, T, B = 4, 8, 3
    rng = np.random.default_rng(0)
    rewards = torch.as_tensor(rng.normal(0, 3, (T, B)), dtype=torch.float32)
    cluster_probs = torch.as_tensor(rng.dirichlet(np.ones(4), (T + 1, B)), dtype=torch.float32)
    discounted = np.zeros((T, B))
    for t in range(T):  # the discounted return restarts with every episode
        discounted[t] = rewards[t].numpy() + (args.gamma * discounted[t - 1] if t % H else 0.0)
    scaled = rewards.numpy() / np.sqrt(discounted.var() + 1e-8)  # a fresh running std: this batch's variance
    return_rms = lambda: RunningMeanStd(shape=())  # noqa: E731
    p = cluster_probs[: H + 1].double().numpy()
    entropy = -(p * np.log(p)).sum(-1)
    r_h, r_c = entropy[:-1] - entropy[1:], -(p[:-1] * np.log(p[:-1] / p[1:])).sum(-1)
    t = np.arange(H)[:, None]
    gamma_h = args.b_h - args.a_h * np.exp(-args.s_h * (H - t))
    gamma_c = -args.b_c + args.a_c * np.exp(-args.s_c * (H - t))
    shaped, got_r_h, got_r_c = milet.shaped_rewards(rewards, cluster_probs, return_rms(), args, True)
    np.testing.assert_allclose(got_r_h.numpy(), r_h, atol=1e-5)
    np.testing.assert_allclose(got_r_c.numpy(), r_c, atol=1e-5)
    np.testing.assert_allclose(shaped[:H].numpy(), scaled[:H] + gamma_h * r_h + gamma_c * r_c, atol=1e-4)
    np.testing.assert_allclose(shaped[H:].numpy(), scaled[H:], atol=1e-4)
    assert np.abs(gamma_h * r_h + gamma_c * r_c).max() > 1e-2  # the bonus is there to be seen
    plain, none_h, none_c = milet.shaped_rewards(rewards, cluster_probs, return_rms(), args, False)
    np.testing.assert_allclose(plain.numpy(), scaled, atol=1e-4)
    assert none_h is None and none_c is None


def test_scaled_task_rewards_are_clipped_at_ten():
    """A running std that has seen a million returns of variance 1 barely moves, so rewards of +-40 scale to about
    +-40 and are clipped to +-10, while the others pass unchanged."""
    args = milet.parse_args(["--episode-length", "4", "--num-envs", "4", "--num-minibatches", "2"])
    rewards = torch.tensor([[40.0, 0.5], [-40.0, -2.0]]).repeat(4, 1)  # T = 8, B = 2
    rms = RunningMeanStd(shape=())
    rms.var, rms.count = np.array(1.0), 1e6
    shaped, _, _ = milet.shaped_rewards(rewards, None, rms, args, False)
    assert shaped[0, 0] == 10 and shaped[1, 0] == -10
    np.testing.assert_allclose(shaped[:, 1].numpy(), rewards[:, 1].numpy() / np.sqrt(rms.var + 1e-8), rtol=1e-6)


def cbvi_batch(obs_dim=3, action_dim=2, T=6, B=5):
    torch.manual_seed(0)
    return torch.randn(T, B, obs_dim), torch.randn(T, B, action_dim), torch.randn(T, B), torch.randn(T, B, obs_dim)


def test_every_term_of_the_cbvi_loss_carries_its_own_weight():
    """Eq. 8: total = reward rec + lambda_s state rec + w_z KL_z + w_c KL_c + lambda_I L_I + lambda_P w_z L_P, every
    term nonzero (the prior is moved off its target so that L_P is), each weight distinct, so that a dropped or
    mis-weighted term changes the total."""
    weights = dict(lambda_s=0.3, kl_weight=0.07, cat_weight=0.011, lambda_i=0.5, lambda_p=0.2)
    model = CBVI(3, 2, num_clusters=3, latent_dim=4, hidden_size=8, state_decoder_layers=(8,), **weights)
    with torch.no_grad():
        for p in model.prior_net.parameters():
            p.add_(0.3 * torch.randn_like(p))
    terms = model.loss(*cbvi_batch())
    assert all(terms[name].abs() > 1e-4 for name in terms), {k: v.item() for k, v in terms.items()}
    expected = (terms["reward_reconstruction"] + 0.3 * terms["state_reconstruction"] + 0.07 * terms["kl_z"]
                + 0.011 * terms["kl_c"] + 0.5 * terms["consistency_l_i"] + 0.2 * 0.07 * terms["prior_l_p"])
    torch.testing.assert_close(terms["total"], expected, rtol=1e-6, atol=0)


def test_l_i_compares_consecutive_inferred_posteriors_from_two_steps_on():
    """Eq. 6 needs two inferred posteriors: a trial of one step has none to compare (L_I = 0), one of two steps has
    the pair (q_1, q_2), whose KL it is."""
    model = CBVI(3, 2, num_clusters=3, latent_dim=4, hidden_size=8)
    assert model.loss(*cbvi_batch(T=1))["consistency_l_i"] == 0
    obs, actions, rewards, next_obs = cbvi_batch(T=2)
    logits = model.encode(actions, next_obs, rewards.unsqueeze(-1), sample=False).cluster_logits
    expected = torch.distributions.kl_divergence(torch.distributions.Categorical(logits=logits[1]),
                                                 torch.distributions.Categorical(logits=logits[2])).mean()
    consistency = model.loss(obs, actions, rewards, next_obs)["consistency_l_i"]
    assert consistency > 0
    torch.testing.assert_close(consistency, expected)


def test_the_elbo_takes_a_random_subset_of_prefixes_only_when_there_are_more_than_asked(monkeypatch):
    """num_prefixes >= T + 1 uses every prefix (the same loss as None, with no random draw), num_prefixes = T draws
    a subset (another loss under the same seed)."""
    T = 6
    losses = {}
    for prefixes in (None, T + 1, T + 5, T):
        torch.manual_seed(0)
        model = CBVI(3, 2, num_clusters=3, latent_dim=4, hidden_size=8, num_prefixes=prefixes)
        losses[prefixes] = model.loss(*cbvi_batch(T=T))["total"]
    assert losses[None] == losses[T + 1] == losses[T + 5] != losses[T]
    drawn, real_randperm = [], torch.randperm  # the subset is drawn from all T + 1 prefixes, the empty one included

    def randperm(n, *args, **kwargs):
        drawn.append(n)
        return real_randperm(n, *args, **kwargs)

    monkeypatch.setattr(torch, "randperm", randperm)
    CBVI(3, 2, num_clusters=3, latent_dim=4, hidden_size=8, num_prefixes=3).loss(*cbvi_batch(T=T))
    assert drawn == [T + 1]


def test_the_cluster_head_learns_through_the_gumbel_sample_of_c():
    """Eq. 4-5 under a relaxed sample of c (Appendix A): with the categorical KL and L_I off, the reconstruction and
    KL_z still reach the cluster head, through the Gumbel-softmax sample that z is conditioned on; an argmax would
    pass no gradient."""
    torch.manual_seed(0)
    model = CBVI(3, 2, num_clusters=3, latent_dim=4, hidden_size=8, cat_weight=0.0, lambda_i=0.0)
    model.loss(*cbvi_batch())["total"].backward()
    assert sum(p.grad.abs().sum() for p in model.cluster_head.parameters()) > 1e-6


def build(flags):
    args = milet.parse_args(["--num-clusters", "3"] + flags)
    torch.manual_seed(0)
    return args, *milet.build_models(args, 3, 2, "cpu")


@pytest.mark.parametrize("flag, weight", [("--lambda-i", "consistency_l_i"), ("--lambda-p", "prior_l_p")])
def test_a_zero_loss_weight_takes_its_term_out_of_the_total(flag, weight):
    """--lambda-i 0 and --lambda-p 0 (App. E's ablations) leave their term computed (and logged) but out of the
    total, which at 0.5 holds it with that weight (L_P's times the KL weight)."""
    totals = {}
    for value in ("0", "0.5"):
        _, model, _, _ = build([flag, value])
        with torch.no_grad():
            for p in model.prior_net.parameters():
                p.add_(0.3 * torch.randn_like(p))
        terms = model.loss(*cbvi_batch())
        assert terms[weight].abs() > 1e-4
        totals[value] = (terms["total"], terms[weight])
    torch.testing.assert_close(totals["0.5"][0] - totals["0"][0], 0.5 * totals["0"][1] * (
        milet.parse_args([]).kl_weight if flag == "--lambda-p" else 1.0), rtol=1e-4, atol=1e-6)


def test_no_stacked_gru_runs_one_gru_and_the_stacked_model_two():
    """--no-stacked-gru (App. E): one GRU whose state serves both heads; the default stacks the T-GRU on the C-GRU:
    moving the T-GRU's weights moves the task posterior q(z) and leaves the cluster posterior q(c), read from the
    C-GRU alone, as it was."""
    obs, actions, rewards, next_obs = cbvi_batch()
    stacked, one_gru = build([])[1], build(["--no-stacked-gru"])[1]
    for model, has_t_gru in ((stacked, True), (one_gru, False)):
        assert ("t_gru" in {name.split(".")[0] for name, _ in model.named_parameters()}) == has_t_gru
    belief = stacked.encode(actions, next_obs, rewards.unsqueeze(-1), sample=False)
    single = one_gru.encode(actions, next_obs, rewards.unsqueeze(-1), sample=False)
    assert belief.z_mean.shape == single.z_mean.shape and belief.cluster_probs.shape == single.cluster_probs.shape
    with torch.no_grad():
        for parameter in stacked.t_gru.parameters():
            parameter.add_(0.5)
    moved = stacked.encode(actions, next_obs, rewards.unsqueeze(-1), sample=False)
    assert (moved.z_mean - belief.z_mean).abs().max() > 1e-3
    torch.testing.assert_close(moved.cluster_probs, belief.cluster_probs)


def test_no_policy_cluster_probs_removes_q_c_from_the_policy_input():
    """By default the policies see q(c | tau): another cluster posterior changes their input. With
    --no-policy-cluster-probs the input is K columns narrower and the same whatever q(c | tau) is."""
    for flags, sees in (([], True), (["--no-policy-cluster-probs"], False)):
        args, model, explore, exploit = build(flags)
        _, belief = model.initial_belief(2, sample=False)
        other = belief._replace(cluster_probs=torch.tensor([[0.9, 0.05, 0.05], [0.1, 0.1, 0.8]]))
        obs_rms = RunningMeanStd(shape=(3,))
        inputs = [milet.policy_input(np.ones((2, 3)), 0, b, obs_rms, args, "cpu") for b in (belief, other)]
        assert inputs[0].shape[1] == milet.policy_input_dim(args, 3) == exploit.actor_mean[0].in_features
        assert milet.policy_input_dim(args, 3) == 3 + 1 + 2 * args.latent_dim + (3 if sees else 0)
        assert (not torch.equal(inputs[0], inputs[1])) == sees


def test_no_exploration_policy_builds_one_policy():
    _, _, explore, exploit = build(["--no-exploration-policy"])
    assert explore is None and exploit is not None
    _, _, explore, _ = build([])
    assert explore is not None


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("clip_vloss, huber", [(True, True), (False, False), (True, False)])
def test_one_update_step_is_a_gradient_step_on_the_ppo_objective(script, clip_vloss, huber):
    """One epoch of one minibatch with plain SGD and no gradient clipping moves every parameter by -lr times the
    gradient of CleanRL's PPO loss written out here: the clipped surrogate on normalised advantages, minus the
    entropy bonus, plus vf_coef times half the (Huber or squared, optionally clipped) value error. The rollout's
    log-probabilities and values are offset so that ratios and values fall on both sides of their clips, and the
    update reports that loss's terms."""
    flags = ["--max-grad-norm", "1e9", "--clip-coef", "0.2", "--vf-coef", "0.7"]
    flags += ([] if clip_vloss else ["--no-clip-vloss"]) + ([] if huber else ["--no-huber-value-loss"])
    flags += [] if script == "milet" else ["--ent-coef", "0.05"]
    core = Core(script, 32, flags)
    generator = torch.Generator().manual_seed(3)
    actions, logprobs, values = core.act()
    old_logprobs = logprobs - (torch.rand(32, generator=generator) - 0.5)
    old_values = values + 2 * torch.rand(32, generator=generator) - 1
    returns, advantages = values + 2 * torch.randn(32, generator=generator), torch.randn(32, generator=generator)
    # the reference loss at the current parameters
    if script == "rl2":
        _, new_logprob, entropy, new_value, _ = core.agent(core.inputs, torch.zeros(32, core.args.gru_hidden_size),
                                                           actions.unsqueeze(0))
        new_logprob, entropy, new_value = new_logprob[0], entropy[0], new_value[0]
    else:
        _, new_logprob, entropy, new_value = core.agent.get_action_and_value(core.inputs, actions)
    c, ent_coef = 0.2, 0.05
    ratio = (new_logprob - old_logprobs).exp()
    normalised = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    pg_loss = torch.max(-normalised * ratio, -normalised * ratio.clamp(1 - c, 1 + c)).mean()
    error = torch.nn.functional.smooth_l1_loss if huber else torch.nn.functional.mse_loss
    value_error = error(new_value, returns, reduction="none")
    if clip_vloss:
        clipped = old_values + (new_value - old_values).clamp(-c, c)
        value_error = torch.max(value_error, error(clipped, returns, reduction="none"))
    v_loss = 0.5 * value_error.mean()
    loss = pg_loss - ent_coef * entropy.mean() + 0.7 * v_loss
    params = list(core.agent.parameters())
    expected = [p - 0.1 * g for p, g in zip(params, torch.autograd.grad(loss, params))]
    if script == "milet":  # MILET takes each policy's entropy coefficient as an argument
        stats = milet.ppo_update(core.agent, torch.optim.SGD(params, lr=0.1), core.inputs, actions, old_logprobs,
                                 advantages, returns, old_values, ent_coef, core.args, 1)
    else:
        stats = core.update(torch.optim.SGD(params, lr=0.1), actions, old_logprobs, advantages, returns, old_values)
    for got, want in zip(core.agent.parameters(), expected):
        torch.testing.assert_close(got.detach(), want.detach(), rtol=1e-4, atol=1e-6)
    logratio = (new_logprob - old_logprobs).detach()
    assert set(stats) == {"policy_loss", "value_loss", "entropy", "approx_kl", "clipfrac", "update_steps"}
    assert stats["update_steps"] == 1 and stats["clipfrac"] == pytest.approx(((ratio - 1).abs() > c).float().mean().item())
    assert 0 < stats["clipfrac"] < 1  # the ratios fall on both sides of the clip
    for name, value in (("policy_loss", pg_loss), ("value_loss", v_loss), ("entropy", entropy.mean()),
                        ("approx_kl", ((logratio.exp() - 1) - logratio).mean())):
        assert stats[name] == pytest.approx(value.item(), rel=1e-5, abs=1e-7), name


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("poisoned, term", [("advantages", "policy_loss"), ("returns", "value_loss")])
def test_a_nan_in_the_update_stops_with_its_term_and_iteration_named(script, poisoned, term):
    core = Core(script, 8)
    actions, logprobs, values = core.act()
    batch = {"advantages": torch.randn(8), "returns": values.clone()}
    batch[poisoned][0] = float("nan")
    extra = (0.0,) if script == "milet" else ()
    with pytest.raises(SystemExit, match=f"loss term '{term}' is nan at iteration 7"):
        core.module.ppo_update(core.agent, torch.optim.SGD(core.agent.parameters(), lr=0.1), core.inputs,
                               actions.unsqueeze(0) if script == "rl2" else actions, core.shaped(logprobs),
                               core.shaped(batch["advantages"]), core.shaped(batch["returns"]), core.shaped(values),
                               *extra, core.args, 7)


@pytest.mark.parametrize("script", SCRIPTS)
def test_target_kl_stops_every_later_epoch_too(script):
    """Without --target-kl, 4 epochs x 4 minibatches take 16 steps; with a tiny one the update stops at the second
    minibatch (the first starts at the rollout policy, KL 0) and no later epoch takes a step."""
    steps = {}
    for target in (None, 1e-9):
        core = Core(script, 16, ["--update-epochs", "4", "--num-minibatches", "4"]
                    + ([] if target is None else ["--target-kl", str(target)]))
        actions, logprobs, values = core.act()
        forwards = []
        core.agent.actor_mean.register_forward_hook(lambda *_: forwards.append(1))  # each minibatch evaluated
        stats = core.update(torch.optim.Adam(core.agent.parameters(), lr=1e-2), actions, logprobs, torch.randn(16),
                            values, values)
        steps[target] = (stats["update_steps"], len(forwards))
        assert stats["approx_kl"] > (0 if target is None else target)
    assert steps == {None: (16, 16), 1e-9: (1, 2)}  # with the stop, no later epoch even evaluates a minibatch

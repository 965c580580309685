"""Cluster-based variational inference (CBVI) for MILET, and the trial buffer it trains on.

This file holds the task-inference half of MILET ("Meta reInforcement Learning via Exploratory
clusTering"):

* ``CBVI``: the stacked-GRU encoder, the cluster posterior q(c | tau_:t), the task posterior
  q(z | h_beta, c), the learnable cluster prior p_omega(z | c) with its target copy p_tgt, and the
  reward/state decoders; with ``cluster_posterior="responsibility"`` (not in the paper) q(c | tau) is read from
  q(z | tau) instead, as its KL to each cluster prior. ``CBVI.loss`` is the objective of Section 4.1: the
  per-prefix ELBO (Eq. 4, 5; derivation in Appendix A), the in-trial consistency L_I (Eq. 6), the prior
  consistency L_P (Eq. 7) and their sum (Eq. 8, written as a loss to minimise).
* ``TrialBuffer``: the buffer V of whole trials that CBVI trains on (Algorithm 1).
The exploration rewards built from the cluster posterior (Sec. 4.2, Eq. 9-12) are in milet_ppo_continuous.py,
next to where the exploration policy's reward is formed.

Conventions: sequences are time-major (T, B, .). A "prefix" tau_:t holds the first t transitions
(a_i, s_{i+1}, r_i), i < t, so a trial of length T has T + 1 prefixes t = 0..T; prefix 0 is the
empty history. Its cluster posterior is the prior, q(c | tau_:0) = p(c) = U(K) (our choice: the paper leaves
it open, the authors' heads gave a learned constant, which L_I then pinned every task's belief to); its z
posterior is the heads applied to the zero hidden state.
Every variance is carried as a LOG-variance (``z_logvar``); the authors used a softplus variance
head instead -- an equivalent parameterisation.
"""
import copy
import math
import zlib
from typing import NamedTuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import Categorical, Dirichlet, Independent, MixtureSameFamily, Normal, kl_divergence


RESPONSIBILITY_FLOOR = 1e-3  # cluster_posterior="responsibility": the probability spread evenly under q(c | tau)


class Belief(NamedTuple):
    """Posterior over (c, z) after some prefix; every field has shape (..., B, .)."""
    cluster_logits: Tensor  # (B, K)
    cluster_probs: Tensor   # (B, K) q(c | tau_:t) = softmax(cluster_logits)
    cluster_sample: Tensor  # (B, K) soft Gumbel-softmax sample (sample=True) or one-hot argmax
    z_mean: Tensor          # (B, latent_dim) mean of q(z | h_beta, c)
    z_logvar: Tensor        # (B, latent_dim) LOG-variance of q(z | h_beta, c)


def mlp(sizes, out_act=False):
    layers = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2 or out_act:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def gaussian(mean, logvar):
    """Diagonal Gaussian over the last dimension."""
    return Independent(Normal(mean, torch.exp(0.5 * logvar)), 1)


class SplitDecoder(nn.Module):
    """MLP on [z, x] whose first layer is split as W [z; x] = W_z z + W_x x (identical maths).

    Every prefix's z must decode every step of the trial: P prefixes x T steps x B trials. The
    split lets us run the step part once per (t, b) and the z part once per (prefix, b), and only
    broadcast-add them, instead of building a (P, T, B, latent + features) input tensor.
    """

    def __init__(self, latent_dim, feat_dim, layers, out_dim):
        super().__init__()
        self.from_z = nn.Linear(latent_dim, layers[0])
        self.from_x = nn.Linear(feat_dim, layers[0], bias=False)
        self.rest = mlp([*layers, out_dim])

    def _decode(self, z, x_part):
        return self.rest((self.from_z(z) + x_part).relu_())  # in place: the sum is a fresh tensor nobody keeps

    def forward(self, z, x):  # z (P, 1, B, L), x (T, B, F) -> (P, T, B, out)
        return self._decode(z, self.from_x(x))

    def mean_squared_error(self, z, x, target, steps=None):  # z (P, 1, B, L), x (T, B, F), target (T, B, out)
        """The squared error averaged over prefixes, steps, trials and output dimensions, without holding the
        (P, T, B, hidden) decodings (AntGoal: 500,000 rows of 64) at once. While training, _PrefixByPrefix decodes
        one prefix at a time and takes its gradient at once; the same value and gradients as one pass over all
        prefixes (tests/test_cbvi.py). With ``steps`` (P, D, B), prefix p of trial b decodes only the steps
        steps[p, :, b]: (P, D, B) rows, decoded in one pass."""
        x_part = self.from_x(x)
        if steps is not None:
            trials = torch.arange(x.shape[1], device=x.device).expand_as(steps)
            return (self._decode(z, x_part[steps, trials]) - target[steps, trials]).pow(2).mean()
        if not torch.is_grad_enabled():
            return (self._decode(z, x_part) - target).pow(2).mean()
        params = [param for param in (*self.from_z.parameters(), *self.rest.parameters()) if param.requires_grad]
        return _PrefixByPrefix.apply(z, x_part, target, self, *params)


class _PrefixByPrefix(torch.autograd.Function):
    """SplitDecoder's training error, decoded one prefix at a time. Each prefix's forward and backward run
    together in ``forward``; only the gradients (the size of z, x_part and the decoder's weights) are kept for
    ``backward``. Against torch.utils.checkpoint per prefix (this file before 2026-12-01), that skips the
    recomputed forward pass, and because every prefix's graph is freed before the next one is built, the heap does
    not fragment: one AntGoal CBVI update peaks about 150 MiB lower and runs about 30% faster
    (docs/benchmarks.md)."""

    @staticmethod
    def forward(ctx, z, x_part, target, decoder, *params):
        z_grad, x_part_grad = torch.zeros_like(z), torch.zeros_like(x_part)
        param_grads = [torch.zeros_like(param) for param in params]
        total_error = z.new_zeros(())
        x_leaf = x_part.detach().requires_grad_()
        with torch.enable_grad():
            for prefix in range(len(z)):
                z_leaf = z[prefix].detach().requires_grad_()
                error = (decoder._decode(z_leaf, x_leaf) - target).pow(2).mean()
                grads = torch.autograd.grad(error, [z_leaf, x_leaf, *params])
                z_grad[prefix] = grads[0]
                x_part_grad += grads[1]
                for accumulated, grad in zip(param_grads, grads[2:]):
                    accumulated += grad
                total_error += error.detach()
        ctx.grads = [grad / len(z) for grad in (z_grad, x_part_grad, *param_grads)]
        return total_error / len(z)

    @staticmethod
    def backward(ctx, grad_output):
        z_grad, x_part_grad, *param_grads = ctx.grads
        return (grad_output * z_grad, grad_output * x_part_grad, None, None, *(grad_output * g for g in param_grads))


class CBVI(nn.Module):
    def __init__(self, obs_dim, action_dim, num_clusters=4, latent_dim=10, hidden_size=32,
                 action_embed=16, state_embed=32, reward_embed=16, stacked=True,
                 reward_decoder_layers=(64, 32), state_decoder_layers=(256, 128),
                 temperature=0.8, lambda_s=0.0, kl_weight=0.01, cat_weight=1e-3,
                 lambda_i=1.0, lambda_p=0.1, num_prefixes=None, num_decodes=None, learn_cluster_weights=False,
                 weight_concentration=1.0, num_train_tasks=500, cluster_posterior="head"):
        super().__init__()
        if cluster_posterior not in ("head", "responsibility"):
            raise ValueError(f"cluster_posterior must be head or responsibility, got {cluster_posterior!r}")
        self.cluster_posterior = cluster_posterior
        self.num_clusters, self.latent_dim, self.hidden_size = num_clusters, latent_dim, hidden_size
        self.stacked, self.temperature, self.num_prefixes = stacked, temperature, num_prefixes
        self.num_decodes = num_decodes
        self.lambda_s, self.kl_weight, self.cat_weight = lambda_s, kl_weight, cat_weight
        self.lambda_i, self.lambda_p = lambda_i, lambda_p
        self.hidden_dim = 2 * hidden_size if stacked else hidden_size
        K, H = num_clusters, hidden_size

        # Encoder: Linear+ReLU embeddings of (a_t, s_{t+1}, r_t), then C-GRU -> h_alpha and
        # T-GRU([embedding, C-GRU output]) -> h_beta (stacked=False: one GRU, h_alpha = h_beta).
        self.embed_action = mlp([action_dim, action_embed], out_act=True)
        self.embed_state = mlp([obs_dim, state_embed], out_act=True)
        self.embed_reward = mlp([1, reward_embed], out_act=True)
        emb = action_embed + state_embed + reward_embed
        self.c_gru = nn.GRU(emb, H)
        self.t_gru = nn.GRU(emb + H, H) if stacked else None

        self.cluster_head = mlp([H, 32, K])                    # q(c | h_alpha) logits (cluster_posterior="head")
        # q(z | h_beta, c): h_alpha reaches it through the T-GRU input, as in the authors' code.
        self.z_body = mlp([H + K, 32], out_act=True)
        self.z_mean_head = nn.Linear(32, latent_dim)
        self.z_logvar_head = nn.Linear(32, latent_dim)

        # Eq. 4: the learnable cluster prior p_omega(z | c); Eq. 7: its frozen target copy p_tgt.
        self.prior_net = mlp([K, 32, 2 * latent_dim])
        self.target_prior_net = copy.deepcopy(self.prior_net).requires_grad_(False)

        # p(c): U(K) with a fixed K (the paper). With learn_cluster_weights (--num-clusters auto, beyond the paper),
        # the weights pi get a variational posterior q(pi) = Dir(alpha) under the sparse prior Dir(gamma / K, ...),
        # a truncated Dirichlet process: clusters that no task uses fade towards weight 0.
        self.learn_cluster_weights, self.num_train_tasks = learn_cluster_weights, num_train_tasks
        if learn_cluster_weights:
            self.log_alpha = nn.Parameter(torch.zeros(K))  # q(pi) starts at Dir(1, ..., 1)
            self.register_buffer("prior_alpha", torch.full((K,), weight_concentration / K))

        # Eq. 5 decoders: r(s_t, a_t, s_{t+1}, z) and, only if lambda_s > 0, s(s_t, a_t, z) -> s_{t+1}.
        self.dec_embed_state = mlp([obs_dim, state_embed], out_act=True)
        self.dec_embed_action = mlp([action_dim, action_embed], out_act=True)
        self.reward_decoder = SplitDecoder(latent_dim, 2 * state_embed + action_embed,
                                           reward_decoder_layers, 1)
        self.state_decoder = (SplitDecoder(latent_dim, state_embed + action_embed,
                                           state_decoder_layers, obs_dim)
                              if lambda_s > 0 else None)

    # ----------------------------------------------------------------- encoder and posterior
    def _embed(self, actions, next_obs, rewards):
        if rewards.dim() == actions.dim() - 1:
            rewards = rewards.unsqueeze(-1)
        return torch.cat([self.embed_action(actions), self.embed_state(next_obs),
                          self.embed_reward(rewards)], dim=-1)

    def _split(self, hidden):  # flat (B, hidden_dim) -> GRU states (1, B, H) each
        h_a = hidden[..., :self.hidden_size].unsqueeze(0)
        return h_a, (hidden[..., self.hidden_size:].unsqueeze(0) if self.stacked else h_a)

    def _run_grus(self, emb, hidden):
        """emb (T, B, E) -> GRU outputs h_alpha, h_beta (T, B, H) and the new flat hidden."""
        h_a0, h_b0 = self._split(hidden)
        out_a, h_a = self.c_gru(emb, h_a0.contiguous())
        if not self.stacked:
            return out_a, out_a, h_a[0]
        out_b, h_b = self.t_gru(torch.cat([emb, out_a], dim=-1), h_b0.contiguous())
        return out_a, out_b, torch.cat([h_a[0], h_b[0]], dim=-1)

    def _cluster(self, logits, sample):
        if sample:  # soft relaxed sample of q(c | tau_:t) (Appendix A, Gumbel-softmax trick)
            return F.gumbel_softmax(logits, tau=self.temperature, hard=False)
        return F.one_hot(logits.argmax(-1), self.num_clusters).to(logits.dtype)

    def _z_params(self, h_beta, c=None):
        if self.cluster_posterior == "responsibility":  # q(z | h_beta) alone: c is read from z, not fed into it
            c = h_beta.new_full((*h_beta.shape[:-1], self.num_clusters), 1.0 / self.num_clusters)
        x = self.z_body(torch.cat([h_beta, c], dim=-1))
        return self.z_mean_head(x), self.z_logvar_head(x)

    def _responsibility_logits(self, z_mean, z_logvar):
        """cluster_posterior="responsibility" (not in the paper): log q(c = k | tau) = log p(c = k) - KL(q(z | tau) ||
        p_omega(z | c = k)) + const, the mean-field optimum of Eq. 4's cluster term when z does not depend on c
        (as VaDE's p(c | z)). q(c) is then only as confident as z is: a z that could be any cluster's gives a flat
        q(c), whatever the behaviour that produced it (the separate head clusters behaviour, docs/antgoal.md).
        It is read off, not trained (detached: the E-step of an EM view; z and the prior train through Eq. 4's
        KL(q(z) || p_omega(z | c)) under c ~ q(c)), so Eq. 6's L_I and KL(q(c) || p(c)) are logged but move nothing:
        trained through, L_I overflowed to inf in the first PointGoal run (0.25M frames). A floor of
        RESPONSIBILITY_FLOOR / K on each cluster keeps KL(q_t || q_t+1) (L_I; r_c, Eq. 11) finite."""
        with torch.no_grad():
            eye = torch.eye(self.num_clusters, device=z_mean.device, dtype=z_mean.dtype)
            kl_to_clusters = kl_divergence(gaussian(z_mean[..., None, :], z_logvar[..., None, :]), self.prior(eye))
            logits = self._empty_prefix_logits(1, kl_to_clusters)[0] - kl_to_clusters.clamp(max=1e6)  # (..., K)
            return (RESPONSIBILITY_FLOOR / self.num_clusters + (1 - RESPONSIBILITY_FLOOR) * logits.softmax(-1)).log()

    def _logits(self, h_alpha, z_params):
        """q(c | tau_:t) logits: the cluster head on h_alpha (the paper) or the responsibilities of z_params."""
        return self.cluster_head(h_alpha) if self.cluster_posterior == "head" else self._responsibility_logits(*z_params)

    def _free_z_params(self, h_beta):
        """z's parameters when they do not depend on c (responsibility), computed once for q(c) and z; else None."""
        return self._z_params(h_beta) if self.cluster_posterior == "responsibility" else None

    def cluster_weights(self) -> Tensor:
        """p(c) for the empty prefix: U(K), or with learned weights the predictive E_q[pi] = alpha / sum(alpha)."""
        if not self.learn_cluster_weights:
            return torch.full((self.num_clusters,), 1.0 / self.num_clusters)
        return Dirichlet(self.log_alpha.exp()).mean

    def _empty_prefix_logits(self, batch, like):  # q(c | tau_:0) = p(c): zeros for U(K)
        if not self.learn_cluster_weights:
            return like.new_zeros(batch, self.num_clusters)
        return self.cluster_weights().log().expand(batch, -1)

    def _prefix_logits(self, h_alpha, z_params):
        """q(c | tau_:t) logits for prefixes t = 0..T from h_alpha (T+1, B, H) or z_params; q(c | tau_:0) = p(c)."""
        logits = self._logits(h_alpha[1:], z_params and [param[1:] for param in z_params])
        return torch.cat([self._empty_prefix_logits(logits.shape[1], logits)[None], logits])

    def _belief(self, logits, h_beta, sample, z_params=None):
        c = self._cluster(logits, sample)
        return Belief(logits, logits.softmax(-1), c, *(z_params or self._z_params(h_beta, c)))

    def initial_belief(self, batch, sample=True):
        """Zero hidden state and the belief after the empty prefix: q(c) = U(K), z from the heads on the zero state."""
        p = next(self.parameters())
        hidden = torch.zeros(batch, self.hidden_dim, device=p.device, dtype=p.dtype)
        logits = self._empty_prefix_logits(batch, hidden)  # the empty prefix: q(c | tau_:0) = p(c)
        return hidden, self._belief(logits, self._split(hidden)[1][0], sample)

    def step(self, prev_action, obs, reward, hidden, sample=True):
        """One online step on (a_t, s_{t+1}, r_t); the same GRU modules on a length-1 sequence."""
        emb = self._embed(prev_action, obs, reward).unsqueeze(0)
        h_alpha, h_beta, hidden = self._run_grus(emb, hidden)
        z_params = self._free_z_params(h_beta[0])
        return hidden, self._belief(self._logits(h_alpha[0], z_params), h_beta[0], sample, z_params)

    def _all_prefix_states(self, actions, next_obs, rewards):
        """h_alpha, h_beta for prefixes t = 0..T, each (T+1, B, H); index 0 = zero state."""
        B = actions.shape[1]
        hidden = actions.new_zeros(B, self.hidden_dim)
        out_a, out_b, _ = self._run_grus(self._embed(actions, next_obs, rewards), hidden)
        h_a0, h_b0 = self._split(hidden)
        return torch.cat([h_a0, out_a]), torch.cat([h_b0, out_b])

    def _prefix_belief(self, h_alpha, h_beta, sample):
        """The belief for prefixes t = 0..T from h_alpha, h_beta (T+1, B, H)."""
        z_params = self._free_z_params(h_beta)
        return self._belief(self._prefix_logits(h_alpha, z_params), h_beta, sample, z_params)

    def encode(self, actions, next_obs, rewards, sample=True):
        """Offline pass over (T, B, .) sequences -> Belief with leading dim T + 1."""
        return self._prefix_belief(*self._all_prefix_states(actions, next_obs, rewards), sample)

    # ----------------------------------------------------------------------------- priors
    def prior(self, cluster):
        """p_omega(z | c) = N(mu_omega(c), sigma^2_omega(c)) for a soft or one-hot c."""
        return gaussian(*self.prior_net(cluster).chunk(2, dim=-1))

    def _target_prior(self, cluster):
        return gaussian(*self.target_prior_net(cluster).chunk(2, dim=-1))

    @torch.no_grad()
    def refresh_target_prior(self):
        """Hard copy p_omega -> p_tgt (the authors refresh every 50 iterations)."""
        self.target_prior_net.load_state_dict(self.prior_net.state_dict())

    # ------------------------------------------------------ evidence posterior (the explorer's bonus)
    @torch.no_grad()
    def evidence_probs(self, obs, actions, rewards, next_obs, hypotheses: Tensor, leave_own_out: bool = False,
                       noise_var=None, temperature: float = 1.0) -> Tensor:
        """p(j | r_:t) over J hypotheses z_j (J, L), for prefixes t = 0..T of (T, B, .) trials, from the rewards alone
        (not in the paper; the explorer's bonus under --cluster-bonus evidence / task-evidence): each hypothesis
        predicts the rewards through the reward decoder, and U(J) is updated by the Gaussian likelihood of each
        observed reward. Its entropy falls only where the hypotheses predict different rewards, i.e. with evidence
        about the task; q(c | tau) from the cluster head can turn confident on how the agent moves (docs/antgoal.md).
        The noise variance is the mean over the trials of the best hypothesis's squared error, so a decoder that
        predicts nothing well gives a flat posterior. leave_own_out (J = B, hypothesis j inferred from trial j): trial
        b never weighs its own z, which was fitted to its own rewards and would explain them whatever they show.
        noise_var and temperature (benchmarks/bonus_on_run_trials.py): another variance, a log-likelihood divided."""
        decoder_input = torch.cat([self.dec_embed_state(obs), self.dec_embed_action(actions),
                                   self.dec_embed_state(next_obs)], dim=-1)
        squared_error = (self.reward_decoder(hypotheses[:, None, None], decoder_input)[..., 0] - rewards) ** 2
        excluded = rewards.new_zeros(rewards.shape[1], len(hypotheses))  # (B, J): -inf where trial b skips z_j
        if leave_own_out:
            excluded.fill_diagonal_(-math.inf)
        if noise_var is None:  # squared_error: (J, T, B)
            noise_var = (squared_error.mean(1) - excluded.T).min(0).values.mean().clamp_min(1e-6)
        log_likelihood = torch.cat([squared_error.new_zeros(1, *excluded.shape), (-0.5 * squared_error / noise_var)
                                    .cumsum(1).permute(1, 2, 0) / temperature])  # (T+1, B, J)
        log_likelihood = log_likelihood + excluded
        # a floor of 1e-4 / J on every hypothesis: an exactly one-hot posterior would make r_c = -KL infinite
        return 1e-4 / len(hypotheses) + (1 - 1e-4) * log_likelihood.softmax(-1)

    def cluster_means(self) -> Tensor:
        """The prior means mu_omega(e_k) of the K clusters, (K, L): --cluster-bonus evidence's hypotheses."""
        eye = torch.eye(self.num_clusters, device=self.prior_net[0].weight.device)
        return self.prior(eye).mean

    # ------------------------------------------------------------- out-of-distribution scores
    @torch.no_grad()
    def ood_scores(self, belief: Belief, obs, actions, rewards, next_obs) -> dict:
        """Two candidate OOD scores per task after an episode (T, B, .) and the belief at its end; higher = less like
        the training tasks (beyond the paper, whose conclusion names OOD detection as future work):
          * "prior_nll": -log sum_k p(c = k) p_omega(z_mean | c = k), the posterior mean z under the learned mixture
            of cluster priors;
          * "reward_error": the mean squared reward reconstruction error of the episode, decoded from z_mean."""
        eye = torch.eye(self.num_clusters, device=belief.z_mean.device, dtype=belief.z_mean.dtype)
        mixture = MixtureSameFamily(Categorical(probs=self.cluster_weights().to(eye)), self.prior(eye))
        if rewards.dim() == actions.dim() - 1:
            rewards = rewards.unsqueeze(-1)
        decoder_input = torch.cat([self.dec_embed_state(obs), self.dec_embed_action(actions),
                                   self.dec_embed_state(next_obs)], dim=-1)
        reward_error = (self.reward_decoder(belief.z_mean[None, None], decoder_input)[0] - rewards).pow(2).mean((0, 2))
        return {"prior_nll": -mixture.log_prob(belief.z_mean), "reward_error": reward_error}

    # ------------------------------------------------------------------------------- loss
    def loss(self, obs, actions, rewards, next_obs):
        """CBVI objective (Eq. 8) on whole time-major trials; returns the terms and the total."""
        if rewards.dim() == actions.dim() - 1:
            rewards = rewards.unsqueeze(-1)                       # (T, B, 1)
        T = actions.shape[0]
        h_alpha, h_beta = self._all_prefix_states(actions, next_obs, rewards)
        with torch.no_grad():  # responsibility: q(c) read from z (the ELBO's z below: the sampled prefixes only)
            z_free = self._free_z_params(h_beta)
        logits = self._prefix_logits(h_alpha, z_free)             # (T+1, B, K), uniform at t = 0

        # Eq. 6: L_I = mean_t KL(q(c|tau_:t) || q(c|tau_:t+1)) over consecutive INFERRED posteriors, t = 1..T-1.
        # Deviation: the pair (p(c), q(c|tau_:1)) is left out; it would pull every task's first belief to U(K).
        consistency = (kl_divergence(Categorical(logits=logits[1:-1]), Categorical(logits=logits[2:])).mean()
                       if T > 1 else logits.new_zeros(()))

        # Prefixes used for the ELBO (Eq. 4): all T + 1, or a random subset (torch's global RNG).
        if self.num_prefixes is not None and self.num_prefixes < T + 1:
            idx = torch.randperm(T + 1, device=logits.device)[:self.num_prefixes].sort().values
            logits, h_beta = logits[idx], h_beta[idx]
        c = self._cluster(logits, sample=True)                    # (P, B, K) Gumbel-softmax sample
        q_z = gaussian(*self._z_params(h_beta, c))
        z = q_z.rsample().unsqueeze(1)                            # (P, 1, B, L) reparameterised

        # Eq. 5: every prefix's z reconstructs the WHOLE trial. Reduced as the authors' configs
        # (vae_avg_reconstruction_terms): MEAN over decoded steps, prefixes and trials, and over the
        # state's dimensions, so the KL weights below mean what they meant in those configs.
        # With num_decodes (the authors' vae_subsample_decodes: 50 on Hopper and Walker, 100 on Humanoid), each
        # prefix of each trial decodes that many steps of the whole trial, drawn uniformly with replacement, as theirs.
        steps = (torch.randint(T, (z.shape[0], self.num_decodes, actions.shape[1]), device=z.device)
                 if self.num_decodes is not None and self.num_decodes < T else None)
        e_s, e_a, e_s1 = (self.dec_embed_state(obs), self.dec_embed_action(actions),
                          self.dec_embed_state(next_obs))
        reward_rec = self.reward_decoder.mean_squared_error(z, torch.cat([e_s, e_a, e_s1], dim=-1), rewards, steps)
        if self.state_decoder is not None:
            state_rec = self.state_decoder.mean_squared_error(z, torch.cat([e_s, e_a], dim=-1), next_obs, steps)
        else:
            state_rec = reward_rec.new_zeros(())

        # Eq. 4: KL(q(z|c,tau_:t) || p_omega(z|c)) under the sampled c (summed over z's dimensions);
        # KL(q(c|tau_:t) || U(K)). Both are averaged over prefixes and trials.
        kl_z = kl_divergence(q_z, self.prior(c)).mean()
        if not self.learn_cluster_weights:
            uniform = Categorical(logits=torch.zeros_like(logits))
            kl_c = kl_divergence(Categorical(logits=logits), uniform).mean()
        else:  # E_q(pi) KL(q(c|tau) || Cat(pi)) = -H(q(c|tau)) - sum_k q_k E[log pi_k], plus the global KL of q(pi)
            q_c, alpha = Categorical(logits=logits), self.log_alpha.exp()
            expected_log_weights = torch.digamma(alpha) - torch.digamma(alpha.sum())
            kl_c = (-q_c.entropy() - (q_c.probs * expected_log_weights).sum(-1)).mean()
            kl_c = kl_c + kl_divergence(Dirichlet(alpha), Dirichlet(self.prior_alpha)) / self.num_train_tasks

        # Eq. 7: L_P = 1/K sum_k KL(p_omega(z|c=e_k) || p_tgt(z|c=e_k)).
        eye = torch.eye(self.num_clusters, device=logits.device, dtype=logits.dtype)
        prior_cons = kl_divergence(self.prior(eye), self._target_prior(eye)).mean()

        # Eq. 8 as a loss (negated objective). Like the authors' configs, the KL terms carry their
        # own weights, and L_P is weighted lambda_p * kl_weight ("L_P: 0.1 x the KL weight").
        total = (reward_rec + self.lambda_s * state_rec + self.kl_weight * kl_z
                 + self.cat_weight * kl_c + self.lambda_i * consistency
                 + self.lambda_p * self.kl_weight * prior_cons)
        return {"reward_reconstruction": reward_rec, "state_reconstruction": state_rec,
                "kl_z": kl_z, "kl_c": kl_c, "consistency_l_i": consistency,
                "prior_l_p": prior_cons, "total": total}


# ------------------------------------------------------------------------------ trial buffer
class TrialBuffer:
    """The CBVI buffer V of Algorithm 1: a ring of whole trials, kept on the CPU, each trial one zlib-compressed
    block of float16 values.

    Memory: each inner episode is stored as its H+1 states, so s_t and s_{t+1} share memory (the authors stored
    both, about 1.8 GB for AntGoal at 10,000 trials), every value is float16, half of float32 (447 MiB for 10,000
    AntGoal trials instead of 893), and each trial is compressed losslessly (zlib level 1). Ant's observations hold
    78 contact forces that are mostly exactly 0, so an AntGoal trial compresses to about a third of its float16
    size (docs/benchmarks.md). The blocks live in one array of page-aligned slots, each as large as an
    incompressible trial, allocated with torch.empty: the system backs a page only once a block is written to it,
    so the buffer costs its compressed size (plus part of a page per trial), and one array cannot fragment the heap
    as 10,000 small allocations would. Precision: ``sample`` returns float32 tensors equal to the float16 rounding of
    what was added, a relative error of at most 2^-11 (values beyond float16's range, +-65504, are clamped to it;
    MuJoCo states and rewards are orders of magnitude smaller). The compression loses nothing."""

    dtype = torch.float16

    def __init__(self, capacity: int, num_episodes: int, episode_length: int, obs_dim: int, action_dim: int):
        self.shapes = {"states": (num_episodes, episode_length + 1, obs_dim),
                       "actions": (num_episodes * episode_length, action_dim),
                       "rewards": (num_episodes * episode_length,)}
        trial_bytes = self.dtype.itemsize * sum(math.prod(shape) for shape in self.shapes.values())
        worst_case = trial_bytes + trial_bytes // 1000 + 64  # zlib adds a few bytes per 16 KiB to incompressible data
        self.blocks = torch.empty(capacity, -(-worst_case // 4096) * 4096, dtype=torch.uint8)  # whole pages per slot
        self.lengths = torch.zeros(capacity, dtype=torch.int64)  # bytes of each slot's compressed trial
        self.capacity, self.size, self.position = capacity, 0, 0

    def _half(self, values: Tensor) -> np.ndarray:
        limit = torch.finfo(self.dtype).max
        return values.detach().cpu().clamp(-limit, limit).to(self.dtype).numpy()

    @property
    def nbytes(self) -> int:
        """Bytes of the stored (compressed) trials."""
        return int(self.lengths.sum())

    def _store(self, slot: int, block: np.ndarray) -> None:
        """Put one compressed trial (uint8 bytes) into a slot; the slot's pages beyond it stay untouched."""
        self.blocks[slot].numpy()[:len(block)] = block
        self.lengths[slot] = len(block)

    @staticmethod
    def _compress(values: np.ndarray) -> np.ndarray:
        return np.frombuffer(zlib.compress(values, 1), dtype=np.uint8)

    def add(self, obs, actions, rewards, next_obs):
        """Store a batch of trials given time-major (T, B, .) tensors."""
        num_episodes, steps = self.shapes["states"][:2]
        steps, batch = steps - 1, actions.shape[1]
        first_states = obs.view(num_episodes, steps, batch, -1)[:, :1]
        episode_states = torch.cat([first_states, next_obs.view(num_episodes, steps, batch, -1)], 1)
        parts = [self._half(part.reshape(batch, -1)) for part in
                 (episode_states.permute(2, 0, 1, 3), actions.transpose(0, 1), rewards.transpose(0, 1))]
        for b, values in enumerate(np.concatenate(parts, axis=1)):  # one float16 row per trial
            self._store((self.position + b) % self.capacity, self._compress(values))
        self.position, self.size = (self.position + batch) % self.capacity, min(self.size + batch, self.capacity)

    def trial(self, slot: int) -> tuple[Tensor, Tensor, Tensor]:
        """One stored trial, decompressed: float16 states (E, H+1, obs), actions (T, A) and rewards (T,)."""
        block = self.blocks[slot, :self.lengths[slot]].numpy()
        values = torch.frombuffer(bytearray(zlib.decompress(block)), dtype=self.dtype)
        parts = values.split([math.prod(shape) for shape in self.shapes.values()])
        return tuple(part.view(shape) for part, shape in zip(parts, self.shapes.values()))

    def sample(self, batch_size: int, device):
        """A batch of whole trials, time-major float32: (obs, actions, rewards, next_obs)."""
        index = torch.randint(self.size, (batch_size,))
        states, actions, rewards = (torch.stack(parts).to(device, torch.float32)
                                    for parts in zip(*(self.trial(slot) for slot in index.tolist())))
        obs, next_obs = states[:, :, :-1].flatten(1, 2), states[:, :, 1:].flatten(1, 2)
        return obs.transpose(0, 1), actions.transpose(0, 1), rewards.transpose(0, 1), next_obs.transpose(0, 1)

    def state_dict(self) -> dict:
        """The ring and its position, for a checkpoint (``--resume``): each stored trial's compressed block as a
        tensor over this buffer's own memory (torch.save writes the blocks' bytes; nothing is copied in memory)."""
        trials = [torch.from_numpy(self.blocks[slot].numpy()[:length])
                  for slot, length in enumerate(self.lengths[:self.size].tolist())]
        return {"trials": trials, "capacity": self.capacity, "shapes": self.shapes, "size": self.size,
                "position": self.position}

    @staticmethod
    def most_recent(state: dict, keep: int) -> dict:
        """A ``state_dict`` cut to its ``keep`` most recent trials, oldest first, as a buffer that has seen only
        those: small enough to commit, so that a run can be continued on another machine (``plots.py slim
        --keep-trials``). The capacity and shapes stay, so ``load_state_dict`` takes it as it is."""
        size, capacity = state["size"], state["capacity"]
        oldest_first = [(state["position"] - size + i) % capacity for i in range(size)]
        kept = oldest_first[max(size - keep, 0):]
        return {**state, "trials": [state["trials"][slot] for slot in kept], "size": len(kept),
                "position": len(kept) % capacity}

    def load_state_dict(self, state: dict) -> None:
        """Copy the checkpoint's trials into this buffer and release them from ``state``, so that a resumed run does
        not hold them twice; the checkpoint must have this buffer's capacity and shapes. A checkpoint of the
        uncompressed float16 ring (this file before 2026-12-01) is compressed slot by slot."""
        if "states" in state:  # the earlier layout: states, actions, rewards tensors of the whole capacity
            state.update(capacity=len(state["states"]), shapes={name: tuple(state[name].shape[1:])
                                                                for name in self.shapes})
        shapes = {name: tuple(shape) for name, shape in state["shapes"].items()}
        if state["capacity"] != self.capacity or shapes != self.shapes:
            raise ValueError(f"the checkpoint's trial buffer holds {state['capacity']} trials of shapes {shapes}, "
                             f"this run's {self.capacity} of {self.shapes}")
        for slot in range(state["size"]):
            if "states" in state:  # the earlier layout's float16 values, compressed here
                block = self._compress(np.concatenate([state[name][slot].numpy().reshape(-1) for name in self.shapes]))
            else:
                block = state["trials"][slot].numpy()
            self._store(slot, block)
        for name in ("trials", *self.shapes):
            state.pop(name, None)
        self.size, self.position = state["size"], state["position"]

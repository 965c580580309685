"""--capture-video (meta_test.py): MP4s of the final meta-test trial, drawn with MuJoCo's offscreen renderer.

MUJOCO_GL is read when mujoco is first imported, so what renders runs in a child process with MUJOCO_GL=egl; it is
skipped only where EGL cannot render. The checks that stop a run before anything is written run in-process, with
mujoco.Renderer failing as it does without a backend."""
import json
import os
import subprocess
import sys

import imageio.v3 as iio
import numpy as np
import pytest
import torch

import envs_clustered
import launch
import meta_test

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "milet_ppo_continuous.py")
H, SIZE = 3, (96, 64)  # tiny trials (2 episodes of 3 steps: 8 frames) and frames (width, height)
ENV_IDS = ("PointGoal", "AntGoal", "HumanoidDir", "HopperRandParams")  # one of each kind, and PointGoal's own model

# The child: one meta-test trial per env id (fixed actions), recorded and drawn by meta_test.capture_video.
CHILD = f"""
import sys, torch
try:  # EGL renders, or this test is skipped
    import mujoco
    mujoco.Renderer(mujoco.MjModel.from_xml_string("<mujoco/>"), 16, 16).close()
except Exception as error:
    sys.exit(f"no EGL: {{type(error).__name__}}: {{error}}")
sys.path.insert(0, {ROOT!r})
import envs_clustered, meta_test
for env_id in {ENV_IDS!r}:
    split = envs_clustered.make_task_split(env_id)
    envs = envs_clustered.make_vector_env(env_id, len(split.test_tasks), episode_length={H}, num_episodes=2, seed=1)
    action = torch.full((envs.num_envs, envs.single_action_space.shape[0]), 0.3)
    replay = lambda: meta_test.evaluate(envs, split, 7, 2, {H}, lambda obs, step: action, lambda *transition: None)
    meta_test.capture_video(sys.argv[1] + "/" + env_id, replay(), replay, size={SIZE!r})
"""


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    out = tmp_path_factory.mktemp("videos")
    child = subprocess.run([sys.executable, "-c", CHILD, str(out)], capture_output=True, text=True, timeout=300,
                           env={**os.environ, "MUJOCO_GL": "egl"})
    if child.returncode != 0 and child.stderr.startswith("no EGL"):
        pytest.skip(child.stderr.strip())
    assert child.returncode == 0, child.stderr
    assert "differ" not in child.stderr  # the replay is the trial it was checked against
    return out


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_one_playable_mp4_per_cluster_with_every_state_of_the_trial(videos, env_id):
    names = sorted(os.listdir(videos / env_id / "videos"))
    assert names == [f"test_task_{k:02d}_cluster_{k}.mp4" for k in range(4)]  # test task k is in cluster k
    for name in names:
        path = videos / env_id / "videos" / name
        assert iio.immeta(path, plugin="FFMPEG")["codec"] == "h264"
        frames = iio.imread(path, plugin="FFMPEG", index=None)
        assert frames.shape == (2 * (H + 1), SIZE[1], SIZE[0], 3)  # each episode: its start, then H steps
        assert frames.std() > 10  # a scene, not a blank frame


def test_the_goal_is_marked(videos):
    """The red goal disc is in AntGoal's first frame (the ant is beige, the floor black and white)."""
    frame = iio.imread(videos / "AntGoal" / "videos" / "test_task_00_cluster_0.mp4", plugin="FFMPEG", index=0)
    red = (frame[..., 0] > 150) & (frame[..., 1] < 90) & (frame[..., 2] < 90)
    assert red.sum() >= 4


@pytest.mark.parametrize("env_id", ["AntGoal", "HumanoidDir", "HopperRandParams"])
def test_qpos_from_the_observed_states(env_id):
    """Ant and Humanoid observe their qpos; Hopper's x, integrated from its observed velocity, stays within 1 cm."""
    envs = envs_clustered.make_vector_env(env_id, 1, episode_length=50, num_episodes=1, seed=0)
    obs, _ = envs.reset(seed=3)
    states, true_qpos = [obs[0]], [envs.datas[0].qpos.copy()]
    for action in np.random.default_rng(0).uniform(-1, 1, (50, 1, envs.single_action_space.shape[0])):
        _, _, _, _, info = envs.step(action)
        states.append(info["next_state"][0])
        true_qpos.append(envs.datas[0].qpos.copy())
    qpos = meta_test.qpos_from_states(env_id, meta_test.render_model(env_id), np.array(states)[None])[0]
    np.testing.assert_allclose(qpos, np.array(true_qpos), atol=0.01 if env_id == "HopperRandParams" else 1e-5)


def no_gl(*args, **kwargs):
    raise ImportError("libEGL.so.1: cannot open shared object file: No such file or directory")


def tiny_run(*flags):
    return ["--episode-length", "5", "--num-envs", "4", "--num-minibatches", "2", "--total-timesteps", "40",
            "--vae-batch-size", "4", "--vae-num-prefixes", "3", "--eval-every", "1", "--no-cuda", *flags]


def test_no_backend_stops_with_one_line_before_the_run_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(meta_test.mujoco, "Renderer", no_gl)
    result = launch.run_script(SCRIPT, "--runs-dir", tmp_path, *tiny_run("--capture-video"))
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1
    assert "--capture-video" in result.stderr and "libegl1" in result.stderr and "MUJOCO_GL=egl" in result.stderr
    assert os.listdir(tmp_path) == []


def test_no_encoder_stops_with_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # as if not installed
    with pytest.raises(SystemExit, match="imageio-ffmpeg.*pip install -r requirements.txt"):
        meta_test.check_video_support()


def test_resuming_a_video_run_without_backend_leaves_it_whole(tmp_path, monkeypatch):
    """--resume takes the run's own flags: a --capture-video run is checked before its folder is touched."""
    launch.run_script(SCRIPT, "--runs-dir", tmp_path, *tiny_run("--checkpoint-every", "1"), check=True)
    (run_dir,) = [tmp_path / name for name in os.listdir(tmp_path)]
    state = torch.load(run_dir / "resume.pt", weights_only=False)
    state["args"]["capture_video"] = True
    torch.save(state, run_dir / "resume.pt")
    before = {name: (run_dir / name).read_bytes() for name in os.listdir(run_dir)}
    monkeypatch.setattr(meta_test.mujoco, "Renderer", no_gl)
    result = launch.run_script(SCRIPT, "--resume", run_dir)
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1 and "libegl1" in result.stderr
    assert {name: (run_dir / name).read_bytes() for name in os.listdir(run_dir)} == before
    assert json.loads((run_dir / "args.json").read_text())["capture_video"] is False  # the folder as it was


def test_plots_frames_makes_a_strip_and_a_gif(tmp_path):
    """plots.py frames: an MP4 (written here without GL) as a strip of 3 frames with white gaps, and as a GIF."""
    import plots

    video = str(tmp_path / "trial.mp4")
    meta_test.write_mp4(video, np.stack([np.full((48, 64, 3), 20 * i, dtype=np.uint8) for i in range(8)]))
    strip = iio.imread(plots.main(plots.Frames(video, out=str(tmp_path / "strip.png"), count=3)))
    assert strip.shape == (48, 3 * 64 + 2 * 4, 3)
    assert abs(int(strip[:, -64:].mean()) - 140) <= 3  # the last frame (20 * 7), despite H.264's rounding
    gif = iio.imread(plots.main(plots.Frames(video, out=str(tmp_path / "trial.gif"), every=2)), index=None)
    assert gif.shape[:3] == (4, 48, 64)
    with pytest.raises(plots.PlotError, match=".png .a frame strip. or .gif"):
        plots.main(plots.Frames(video, out=str(tmp_path / "trial.mp4")))


def test_eval_checkpoint_draws_the_videos_of_a_saved_run(videos, tmp_path):
    """--eval-checkpoint with --capture-video: the videos of a finished run's checkpoint, beside it (EGL only: the
    `videos` fixture skips this test where EGL cannot render)."""
    launch.run_script(SCRIPT, "--runs-dir", tmp_path, *tiny_run("--checkpoint-every", "1"), check=True)
    (run_dir,) = [tmp_path / name for name in os.listdir(tmp_path)]
    child = subprocess.run([sys.executable, SCRIPT, "--eval-checkpoint", str(run_dir / "resume.pt"), "--capture-video"],
                           capture_output=True, text=True, timeout=300, env={**os.environ, "MUJOCO_GL": "egl"})
    assert child.returncode == 0, child.stderr
    assert "differ" not in child.stderr and json.loads(child.stdout.splitlines()[0])["eval_trials"] == 1
    names = sorted(os.listdir(run_dir / "videos"))
    assert len(names) == 4 and all(name.endswith(".mp4") for name in names)
    frames = iio.imread(run_dir / "videos" / names[0], plugin="FFMPEG", index=None)
    assert frames.shape[0] == 2 * (5 + 1)  # both episodes of 5 steps, each with its start state

"""A plugin task answers through the public API and is scored by `unicl eval`.

The plugin is the counting example of docs/plugins.md, run as the docs print it: a task the
library has never heard of, registered from a module named under `plugins:`.
"""

import re
import sys
from pathlib import Path

import numpy as np
import pytest

import unicl
from unicl.tasks import TASKS

pytestmark = pytest.mark.usefixtures("one_cpu_thread")

DOCS = Path(__file__).resolve().parents[2] / "docs" / "plugins.md"


def _plugin_source() -> str:
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), re.S)
    return next(b for b in blocks if '@TASKS.register("counting")' in b)


@pytest.fixture(scope="module")
def counting_export(tmp_path_factory, make_tiny_export):
    root = tmp_path_factory.mktemp("counting")
    (root / "unicl_counting_plugin.py").write_text(_plugin_source())
    sys.path.insert(0, str(root))
    world = [f"data.root={root / 'world'}", "data.images=30", "data.val_images=48"]
    overrides = [*world, "data.size=64", "data.workers=1", "plugins=[unicl_counting_plugin]"]
    try:
        yield make_tiny_export(root / "model", overrides=[*overrides, "tasks.counting={shots: 1}"])
    finally:
        sys.path.remove(str(root))
        sys.modules.pop("unicl_counting_plugin", None)
        TASKS._entries.pop("counting", None)


def _image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (24, 30, 3), dtype=np.uint8)


def test_plugin_task_is_prompted_through_the_api(counting_export):
    model = unicl.load(counting_export, device="cpu", allow_plugins=True)
    assert "counting" in model.tasks
    demos = [(_image(1), "2"), (_image(2), "4")]
    answer = model.predict("counting", _image(3), demos, max_tokens=3)
    assert isinstance(answer, str)
    details = model.predict(
        "counting", [_image(3), _image(4)], demos, max_tokens=3, return_details=True
    )
    assert [d.value for d in details][0] == answer  # a batch answers like one query
    # the prompt holds the demonstrations' counts and no answer for the query
    predictor = model.predictor
    from unicl.tasks.user import UserItem

    episode = predictor.prompts(
        "counting", [UserItem(_image(3))], [UserItem(_image(1), text="2")], None
    )[0]
    packed = predictor.packer.pack(episode)
    text = predictor.vocab.decode(
        "gpt2", [t for t in packed.input_ids.tolist() if t in predictor.vocab.ranges["gpt2"]]
    )
    assert text.strip() == "2" and packed.prefix_length == len(packed)
    with pytest.raises(ValueError, match=r"demos\[0\]: expected a \(image, text\) tuple"):
        model.predict("counting", _image(3), [(_image(1),)])
    with pytest.raises(ValueError, match="not trained for nope; its tasks: captioning, counting"):
        model.predict("nope", _image(3), demos)


def test_plugin_task_is_scored_by_unicl_eval(counting_export):
    from unicl.evaluate import EvalOptions, ensure_episode_files, episode_dir, evaluate
    from unicl.tasks.episodes import load_episodes

    model = unicl.load(counting_export, device="cpu", allow_plugins=True)
    opts = EvalOptions(shots=[0, 1], queries_per_category=1, batch_size=4, max_tokens=3)
    files = ensure_episode_files(model.predictor, episode_dir(counting_export / "ep", opts), opts)
    table = evaluate(model, "counting", files, opts, run="counting", progress=False)
    task = model.predictor.tasks["counting"]
    for split in ("seen", "unseen"):
        row = table.get("model", 1, split)
        assert row.episodes > 0 and set(row.metrics) == {"accuracy"}
        # the accuracy is the share of generated counts equal to the query's instance count
        path = next(files.glob(f"counting_val_{split}_*.json"))
        episodes = list(load_episodes(path, task, model.config.data, 1))
        answers = model.predictor.answer(episodes, model.predictor.sampling({"max_tokens": 3}))
        truth = [str(len(e.meta["query_record"].segmentations)) for e in episodes]
        expected = 100 * np.mean([a.value == t for a, t in zip(answers, truth)])
        assert row.metrics["accuracy"] == pytest.approx(expected)
    assert "accuracy %" in table.to_markdown()

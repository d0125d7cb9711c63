"""The ``nas`` step of an image pipeline: neural architecture search whose best network is a candidate model.

With a ``nas:`` section (:class:`~modelyard.pipeline._spec.NASSpec`) on a built-in image
data set, :func:`~modelyard.pipeline._stages.build_steps` adds this step before the train
steps. It runs :func:`modelyard.search.nas` on the data step's ``train.npz`` and
``valid.npz`` (seeded subsets of them, ``train_size`` and ``valid_size``) and writes, in
its folder ``nas/``:

* ``nas.json``, ``leaderboard.csv``, ``history.png``: :meth:`NASResult.save`'s files;
* ``model.safetensors``: the best network's weights (safetensors, no pickle), with the
  architecture as JSON in the file's metadata, so the file alone loads again
  (:func:`load_nas_predictor`); ``architecture.json``: the same architecture, to read;
* ``fit.json``: ``family: nas``, the fit time, validation accuracy, and a summary of the
  search (strategy, budget, best model, top of the leaderboard, history) for the report.

The model joins the evaluate step's candidates as ``nas`` and, when chosen (or named by
``compress.model``), goes through the image evaluate, compress and export steps like a
``cnn`` model: :func:`~modelyard.pipeline._image.load_image_model` loads it as an
:class:`~modelyard.models.ImagePredictor` holding a :class:`~modelyard.search._nas.NASNetwork`
(pixels in ``[0, 1]``, standardized inside the network).

:func:`nas` keeps no trained weights, only each model's record. For a cell strategy
(pnas, rl, evolution, random, ...) the step therefore retrains the best cell exactly as
the search trained it: the same training subset, seed (initialization and data order),
epochs, learning rate and batch size, on one torch thread, so the stored network is the
one the search scored (``fit.json`` records both accuracies). Network morphism's models
inherit their parents' weights and cannot be retrained from scratch into the same model,
so for ``morphism`` the step keeps the best network's weights as the search trains it.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from modelyard.errors import ModelFormatError
from modelyard.pipeline._image import _classes, _ImageStep, read_image_split
from modelyard.pipeline._stages import _jsonable
from modelyard.pipeline._step import Step, StepContext

__all__ = ["NAS_FAMILY", "NASConfig", "NASStep", "is_nas_model", "load_nas_predictor", "save_nas_model"]

#: The model family stored in the metadata of the nas step's ``model.safetensors``.
NAS_FAMILY = "nas"
#: Models of the leaderboard shown in the report.
TOP = 10
_RETRAIN = "re-run the pipeline's nas step to write it again"


class NASConfig(BaseModel):
    """The config of a searched image network: its architecture (see :class:`~modelyard.search._nas.NASNetwork`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    arch: Literal["nas"] = "nas"
    architecture: dict[str, Any]


def save_nas_model(predictor: Any, path: str | os.PathLike[str]) -> Path:
    """Write an image predictor holding a ``NASNetwork`` as one ``.safetensors`` file, atomically.

    The metadata holds ``family: nas``, the architecture as JSON (``config``), the classes
    and image shape, and a digest of the tensors, like :func:`modelyard.models.save_torch`.
    """
    from modelyard.models._io import _write
    from modelyard.search._nas import NASNetwork

    module = predictor.module
    if not isinstance(module, NASNetwork):
        raise TypeError(f"save_nas_model saves a predictor holding a NASNetwork; got {type(module).__name__}.")
    path = Path(path)
    info = {"classes": list(predictor.classes), "image_shape": list(module.image_shape)}
    return _write(module, path, NAS_FAMILY, json.dumps(module.architecture, sort_keys=True), info)


def _metadata(path: Path) -> dict[str, str] | None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception:  # noqa: BLE001 - unreadable: the caller's loader raises the clear error
        return None


def is_nas_model(path: str | os.PathLike[str]) -> bool:
    """True if ``path`` is a ``.safetensors`` file written by :func:`save_nas_model`."""
    path = Path(path)
    if path.suffix.lower() != ".safetensors" or not path.is_file():
        return False
    return (_metadata(path) or {}).get("family") == NAS_FAMILY


def load_nas_predictor(path: str | os.PathLike[str]) -> Any:
    """Load the nas step's network as an :class:`~modelyard.models.ImagePredictor` (safetensors only, no pickle).

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ModelFormatError
        If the file is not a readable NAS model, its architecture is invalid, or its
        tensors do not match the architecture or the recorded digest.
    """
    import torch

    from modelyard.errors import SpecError
    from modelyard.models._image import ImagePredictor
    from modelyard.models._io import FORMAT, _load_state, _read_tensors
    from modelyard.search._nas import NASNetwork

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Model file {path} does not exist; check the path or {_RETRAIN}.")
    unreadable = f"{path} is not a readable safetensors file (truncated or corrupted); {_RETRAIN}."
    metadata = _metadata(path)
    if metadata is None:
        raise ModelFormatError(unreadable)
    if metadata.get("format") != FORMAT or metadata.get("family") != NAS_FAMILY:
        raise ModelFormatError(f"{path} is not a modelyard NAS model (family {metadata.get('family')!r}); load it "
                               "with modelyard.models.load_predictor, or " + _RETRAIN + ".")
    try:
        architecture = json.loads(metadata["config"])
        info = json.loads(metadata["schema"])
        classes = [str(c) for c in info["classes"]]
        with torch.random.fork_rng(devices=[]):  # building initializes weights: leave the caller's RNG alone
            module = NASNetwork(architecture)
    except (KeyError, TypeError, ValueError, SpecError) as exc:
        raise ModelFormatError(f"{path} has an invalid NAS architecture or image info in its metadata ({exc}); "
                               f"{_RETRAIN}.") from None
    tensors = _read_tensors(path, metadata, unreadable)
    _load_state(module, tensors, path, NAS_FAMILY)
    return ImagePredictor(module, classes, NASConfig(architecture=module.architecture))  # type: ignore[arg-type]


class NASStep(_ImageStep, Step):
    """Search CNN architectures on the image splits; store the best network as the candidate ``nas``."""

    kind = "nas"
    VERSION = "1"

    def code_version(self) -> str:
        """Also covers :mod:`modelyard.search._nas` (the search and the network it rebuilds)."""
        from modelyard.search import _nas

        digest = hashlib.sha256(inspect.getsource(_nas).encode()).hexdigest()[:12]
        return f"{super().code_version()}/nas:{digest}"

    def run(self, ctx: StepContext) -> None:
        import shutil
        import tempfile

        import numpy as np

        from modelyard.data import ImageData
        from modelyard.models._image import ImagePredictor
        from modelyard.search._nas import nas

        cfg = self.config
        classes = _classes(ctx)
        name = str(ctx.read_json("schema").get("name", "images"))
        train, valid = read_image_split(ctx, "train"), read_image_split(ctx, "valid")
        # nas() reads train and valid only; the test split stays with the evaluate step.
        data = ImageData(name=name, train=train, valid=valid, test=valid, classes=tuple(classes))
        strategy, budget = cfg["strategy"], cfg["models"]
        bar = ctx.progress(f"nas · {strategy}", budget + 1)  # every trained model, then storing the best
        best_seen = [-math.inf]

        def show(index: int, accuracy: float) -> None:
            best_seen[0] = max(best_seen[0], accuracy)
            bar(completed=min(index, budget), info=f"model {index}/{budget} · best {best_seen[0]:.4f}")

        options = dict(cfg["options"])
        kept: dict[str, Any] = {}
        if strategy == "morphism":
            def on_model(rec: dict[str, Any], net: Any) -> None:  # morphism_search, after each trained network
                show(int(rec["model"]) + 1, float(rec["accuracy"]))
                if not kept or rec["accuracy"] > kept["accuracy"]:  # the earliest among ties, as NASResult.best
                    kept.update(accuracy=float(rec["accuracy"]), index=int(rec["model"]) + 1, config=net.config,
                                state={k: v.detach().clone() for k, v in net.state_dict().items()})

            options["callback"] = on_model
        t0 = time.perf_counter()
        result = nas(data, strategy, models=budget, epochs=cfg["epochs"], n_blocks=cfg["n_blocks"],
                     n_cells=cfg["n_cells"], n_stacks=cfg["n_stacks"], channels=cfg["channels"],
                     stem_stride=cfg["stem_stride"], train_size=cfg["train_size"], valid_size=cfg["valid_size"],
                     lr=cfg["lr"], batch_size=cfg["batch_size"], seed=cfg["seed"], beam=cfg["beam"],
                     initial=cfg["initial"], strategy_options=options or None,
                     callback=lambda rec: show(rec.index, rec.accuracy))
        result.settings["strategy_options"] = dict(cfg["options"])  # without the step's callback
        best = result.best
        bar(completed=budget, info=f"storing model {best.index} (accuracy {best.accuracy:.4f})")
        module, retrained = self._best_network(result, data, kept)
        predictor = ImagePredictor(module, classes, NASConfig(architecture=module.architecture))  # type: ignore[arg-type]
        fit_seconds = time.perf_counter() - t0
        with ctx.output("model.safetensors") as tmp:
            save_nas_model(predictor, tmp)
        ctx.write_json("architecture.json", module.architecture)
        with tempfile.TemporaryDirectory(prefix="modelyard-nas-") as tmp:
            for file_name, path in result.save(tmp).items():
                with ctx.output(file_name) as out:
                    shutil.copyfile(path, out)
        valid_accuracy = float(np.mean(predictor.predict(valid.x) == valid.y))
        n_params = int(sum(p.numel() for p in module.parameters()))
        board = sorted(result.records, key=lambda r: (-r.accuracy, r.index))[:TOP]
        summary = {
            "strategy": strategy, "budget": budget, "trained": len(result.records), "epochs": cfg["epochs"],
            "train_size": result.settings["train_size"], "valid_size": result.settings["valid_size"],
            "seconds": round(result.seconds, 3),
            "best": {k: v for k, v in best.to_dict().items() if k not in ("genotype", "extra")},
            "retrained": retrained is not None,
            "leaderboard_top": [{k: v for k, v in r.to_dict().items() if k not in ("genotype", "extra")}
                                for r in board],
            "history": [[r.index, r.accuracy] for r in result.records],
        }
        ctx.write_json("fit.json", _jsonable({
            "family": NAS_FAMILY, "fit_seconds": round(fit_seconds, 3), "valid_accuracy": valid_accuracy,
            "arch": module.architecture["kind"], "n_params": n_params, "search_accuracy": best.accuracy,
            "retrained_accuracy": retrained, "nas": summary,
        }))
        bar(completed=budget + 1, info="")
        ctx.record(strategy=strategy, models=len(result.records), best_accuracy=best.accuracy,
                   valid_accuracy=valid_accuracy, n_params=n_params, fit_seconds=round(fit_seconds, 2))

    def _best_network(self, result: Any, data: Any, kept: dict[str, Any]) -> tuple[Any, float | None]:
        """The best model's network, trained, and its retrained validation accuracy (None when kept as trained)."""
        import numpy as np
        import torch

        from modelyard.search._nas import (
            NASNetwork,
            cell_architecture,
            subset,
            train_and_score,
        )

        cfg = self.config
        best = result.best
        if best.genotype is None:  # network morphism: the weights kept while the search trained it
            if kept.get("index") != best.index:
                raise RuntimeError(f"The nas step kept model {kept.get('index')} but the search's best is model "
                                   f"{best.index}; re-run the step.")
            architecture = {"kind": "convnet", "network": _jsonable(kept["config"]),
                            "n_classes": data.n_classes, "image_shape": list(data.image_shape),
                            "input_mean": 0.0, "input_std": 1.0}
            with torch.random.fork_rng(devices=[]):
                module = NASNetwork(architecture)
            module.net.load_state_dict(kept["state"])
            module.eval()
            return module, None
        # A cell: rebuilt and retrained exactly as nas() trained it (same subsets, seed, settings).
        seed = cfg["seed"]
        train = subset(data.train, cfg["train_size"], seed)
        valid = subset(data.valid, cfg["valid_size"], seed + 1)
        pixels = train.x.astype(np.float32) / 255.0  # train_and_score's standardization
        architecture = cell_architecture(best, result.settings, image_shape=data.image_shape,
                                         n_classes=data.n_classes, input_mean=float(pixels.mean()),
                                         input_std=float(pixels.std()) or 1.0)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            module = NASNetwork(architecture)
        accuracy = train_and_score(module.net, train, valid, epochs=cfg["epochs"], lr=cfg["lr"],
                                   batch_size=cfg["batch_size"], seed=seed)
        module.eval()
        return module, float(accuracy)

    def summary(self, figures: dict[str, Any]) -> str:
        return (f"{figures.get('models', 0)} models ({figures.get('strategy', '?')}), best validation accuracy "
                f"{figures.get('best_accuracy', float('nan')):.4f}; stored as model nas "
                f"({figures.get('n_params', 0):,} parameters)")

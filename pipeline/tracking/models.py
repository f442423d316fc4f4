"""The merged adapter as MLflow holds it: the logged pyfunc model of a run (:mod:`.pyfunc_model`), the version with
this identity, and a version's files downloaded back."""

from __future__ import annotations

import contextlib
import importlib.metadata as md
import os
import tempfile
from pathlib import Path

import yaml

from ..records import FetchedSource, Lineage
from ..settings import Settings
from .client import client
from .lineage import git_remote_url, identity

# DVC's remote plugins (pip names): whichever of them the night has installed, a dvc:// base may need to be read back
DVC_REMOTE_PLUGINS = ("dvc-s3", "dvc-gs", "dvc-azure", "dvc-ssh", "dvc-hdfs", "dvc-webhdfs", "dvc-oss", "dvc-gdrive",
                      "dvc-webdav")


def _installed(name: str) -> str | None:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def model_requirements(base_uri: str, torch_index: str | None = None) -> list[str]:
    """The version's pip requirements, pinned as installed, for MLflow's environment managers (``mlflow models
    serve`` without ``--env-manager local``): mlflow, torch, transformers, peft, safetensors, and what fetches the base
    (huggingface_hub for ``hf://``; dvc and the installed DVC remote plugins for ``dvc://``).

    torch: the public version (``2.13.0+cpu`` -> ``torch==2.13.0``), which any index serves (on Linux, PyPI's is the
    multi-GB CUDA build); with ``torch_index`` (``pipeline.mlflow.torch_index``, an index serving the night's build,
    e.g. PyTorch's ``https://download.pytorch.org/whl/cpu``) the exact build and that index (``--extra-index-url``)."""
    torch = md.version("torch")
    reqs = [f"--extra-index-url {torch_index}", f"torch=={torch}"] if torch_index else \
        [f"torch=={torch.partition('+')[0]}"]
    reqs += [f"{n}=={md.version(n)}" for n in ("mlflow", "transformers", "peft", "safetensors")]
    if base_uri.startswith("hf://"):
        reqs.append(f"huggingface_hub=={md.version('huggingface_hub')}")
    if base_uri.startswith("dvc://"):
        reqs += [f"dvc=={md.version('dvc')}"] + [f"{n}=={v}" for n in DVC_REMOTE_PLUGINS if (v := _installed(n))]
    return reqs


def base_locator(base: FetchedSource, lineage: Lineage) -> dict:
    """How the pyfunc finds the base on any host (pyfunc_model.resolve_base): the night's directory, the catalog's
    source and revision, pico's digest of it, and for a ``dvc://`` or relative source the project it is read from
    (its git remote without credentials, the night's checkout, the night's git commit)."""
    return {"base_model": base.path, "base_uri": base.uri, "base_revision": base.revision,
            "base_sha256": base.sha256, "base_project": lineage.project,
            "base_git_url": git_remote_url(Path(lineage.project)), "base_git_commit": lineage.git.commit}


def serving_signature(generation: dict):
    """The pyfunc's signature: any input (plain prompts or chat requests, pyfunc_model.py), and per-request
    generation params whose defaults are the benchmark's own settings."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ParamSchema, ParamSpec

    return ModelSignature(inputs=None, outputs=None, params=ParamSchema([
        ParamSpec("max_new_tokens", "long", int(generation["max_new_tokens"])),
        ParamSpec("stop", "string", list(generation["stop"]), shape=(-1,)),
        ParamSpec("temperature", "double", 0.0)]))


def log_model(c, exp_id: str, run_id: str, store: Path, base: FetchedSource, lineage: Lineage,
              generation: dict, torch_index: str | None = None) -> str:
    """The merged adapter as an MLflow logged model of the run: the pyfunc of pyfunc_model.py (model code plus the
    adapter files; the base is named in its config, never copied), generating as the benchmark did (``generation``:
    chat template, max new tokens, stop strings), with a signature of its per-request params and an input example.
    Client calls only: no global tracking URI, so runs against different stores in one process never cross. Returns
    the model id."""
    import mlflow
    from mlflow.models import Model

    reqs = model_requirements(base.uri, torch_index)
    recipe = lineage.recipe
    model = c.create_logged_model(
        exp_id, name="model", source_run_id=run_id,
        tags={"pico.identity": identity(lineage), "pico.merge_key": lineage.merge_key,
              "eval.fingerprint": lineage.eval.fingerprint,
              "output.sha256": lineage.output.files["adapter_model.safetensors"]},
        params={"method": recipe["method"], "space": recipe.get("space", "learned"),
                "calibrate": recipe.get("calibrate", recipe.get("init")),
                "recipe_hash": lineage.recipe_hash, "sources": ",".join(s.name for s in lineage.sources)})
    try:
        with tempfile.TemporaryDirectory() as tmp:
            mlflow.pyfunc.save_model(
                Path(tmp) / "model", python_model=str(Path(__file__).with_name("pyfunc_model.py")),
                artifacts={"adapter": str(store)}, pip_requirements=reqs,
                mlflow_model=Model(run_id=run_id, model_id=model.model_id, artifact_path=model.artifact_location),
                signature=serving_signature(generation),
                input_example=([generation.get("example") or "Hello!"],
                               {"max_new_tokens": int(generation["max_new_tokens"])}),
                model_config={**base_locator(base, lineage), "dtype": "float32", "device": "auto",
                              **{k: generation[k] for k in ("apply_chat_template", "chat_template", "max_new_tokens",
                                                            "stop")}})
            c.log_model_artifacts(model.model_id, str(Path(tmp) / "model"))
    except BaseException:
        c.finalize_logged_model(model.model_id, "FAILED")
        raise
    c.finalize_logged_model(model.model_id, "READY")
    return model.model_id


def registry_sees(settings: Settings):
    """MLflow's SQL registry store resolves a ``models:/<model_id>`` source through the *global* tracking URI, not the
    client's (its own TODO in ``SqlAlchemyStore.create_model_version``, MLflow 3.17): with an embedded store, point
    the global URI at this store for that one call and put it back (MLflow's own helper for exactly this). A tracking
    server resolves it on its side. MLflow mirrors its global URI into the ``MLFLOW_TRACKING_URI`` environment
    variable (and unsets it when it restores "no URI"), which the pipeline's settings read: that variable is put back
    exactly as it was, so no later run in this process is pointed at this store (or loses a user's setting)."""
    if not settings.local_tracking:
        return contextlib.nullcontext()
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    @contextlib.contextmanager
    def scoped():
        saved = os.environ.get("MLFLOW_TRACKING_URI")
        try:
            with _use_tracking_uri(settings.tracking_uri):
                yield
        finally:
            if saved is None:
                os.environ.pop("MLFLOW_TRACKING_URI", None)
            else:
                os.environ["MLFLOW_TRACKING_URI"] = saved

    return scoped()


def find_version(c, name: str, lineage: Lineage):
    """The existing version with this identity (reruns reuse it instead of uploading and registering a duplicate):
    a registry search on the version tag, not a scan."""
    from mlflow.exceptions import MlflowException

    try:
        versions = c.search_model_versions(f"name = '{name}' AND tags.`pico.identity` = '{identity(lineage)}'")
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    return min(versions, key=lambda v: int(v.version)) if versions else None


def model_id(version) -> str | None:
    """The logged model a version was registered from (the SQLite registry leaves ``model_id`` empty; the source
    ``models:/<model_id>`` names it)."""
    if getattr(version, "model_id", None):
        return version.model_id
    return version.source[len("models:/"):] if str(version.source).startswith("models:/m-") else None


def adapter_dir(local: Path) -> Path:
    """The adapter files inside a downloaded version: the pyfunc model's ``adapter`` artifact (its path from the
    MLmodel file), or, for versions registered before the model was logged, the folder itself."""
    local = Path(local)
    if not (local / "MLmodel").is_file():
        return local
    flavor = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["python_function"]
    return local / flavor["artifacts"]["adapter"]["path"]


def files_uri(c, source: str) -> str:
    """Where a version's files are: for a ``models:/<model_id>`` source its logged model's artifact location
    (resolved through this client, never through MLflow's global registry URI), else the source itself."""
    if str(source).startswith("models:/m-"):
        return c.get_logged_model(source[len("models:/"):]).artifact_location
    return source


def download_version(settings: Settings, source: str, dest: Path) -> Path:
    """The adapter files of a model version (its source), downloaded once into ``dest``."""
    import mlflow.artifacts

    if not (dest / "adapter_model.safetensors").is_file():
        uri = files_uri(client(settings), source)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=dest.parent))
        local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(tmp),
                                                    tracking_uri=settings.tracking_uri)
        adapter_dir(Path(local)).rename(dest) if not dest.exists() else None
    return dest

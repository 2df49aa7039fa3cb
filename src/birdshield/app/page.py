"""The Gradio page: panels that call `actions` and show each served model's answer side by side.

Offline and local by design: analytics off, no share link, fonts and scripts from the installed wheel,
bound to 127.0.0.1 unless asked otherwise; uploads bounded in bytes and pixels, and file data accepted only
as an upload to this page (a URL is refused, never fetched); one job at a time (every event that runs a
model shares one queue slot), a Stop button for the long ones and a time limit per job. Every handler
checks its own inputs: a client can call the API endpoints directly, past the sliders' limits.
"""

from __future__ import annotations

import os

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before gradio is imported: no telemetry, no update check

import math  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
from collections.abc import Iterator, Sequence  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import gradio as gr  # noqa: E402
from gradio.utils import get_upload_folder, is_in_or_equal  # noqa: E402
from gradio_client import utils as client_utils  # noqa: E402
from PIL import Image  # noqa: E402
from starlette.middleware import Middleware  # noqa: E402
from starlette.responses import PlainTextResponse  # noqa: E402
from starlette.types import ASGIApp, Receive, Scope, Send  # noqa: E402

from .. import data  # noqa: E402
from ..attacks.eps import format_eps  # noqa: E402
from ..attacks.registry import ATTACK_SPECS  # noqa: E402
from ..defenses import make_defense  # noqa: E402
from ..defenses.specs import DEFENSES, PARAM_RANGES, TRANSFORM_NAMES, param_text  # noqa: E402
from ..inference import Top  # noqa: E402
from . import actions, host_warning, reports  # noqa: E402
from .jobs import Cancelled, JobGuard, TimedOut  # noqa: E402
from .scratch import Scratch  # noqa: E402

JOB = "model"  # the concurrency group of every event that runs a model: one job at a time in all
UNTARGETED = "untargeted"
SIGMAS = [0.12, 0.25, 0.5, 1.0]
ALPHA = 0.001  # smoothing's error probability: each certificate is wrong with probability at most this
MAX_EPS_255, MAX_EPS_L2 = 16.0, 5.0  # the attack budgets offered (Linf in /255 grey levels; L2 pixel units)
MAX_STEPS = 1000  # an attack's steps (Square: queries)
MIN_SAMPLES, MAX_SAMPLES = 100, 10_000  # smoothing's n
JOB_TIMEOUT_S = 300.0  # a job still running this long after it started is stopped (serve --job-timeout)
INTRO = (
    "# birdshield\n"
    "Upload a bird photo, attack it, and watch the models disagree. Everything runs on this machine; "
    "nothing you upload leaves it."
)


@dataclass
class Settings:
    """What `birdshield serve` passes on: where test photos and reports are, the upload limit and the time
    limit per job."""

    data_dir: Path | None = None
    reports_dir: Path = field(default_factory=Path.cwd)
    max_upload_mb: float = actions.MAX_UPLOAD_MB
    job_timeout_s: float = JOB_TIMEOUT_S


def test_photos(data_dir: Path | None, limit: int = 2000) -> list[str]:
    """Photos of the data's test split (or of the folder itself) as SPECIES/FILE names, for the picker."""
    if data_dir is None:
        return []
    root = _photo_root(data_dir)
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in data.IMAGE_EXTENSIONS)[:limit]
    return [p.relative_to(root).as_posix() for p in files]


def _photo_root(data_dir: Path) -> Path:
    return data_dir / "test" if (data_dir / "test").is_dir() else data_dir


def _plain(text: str) -> str:
    """Text shown literally in Markdown: a file name cannot add links, images or HTML to the page."""
    return re.sub(r"([\\`*_{}\[\]()<>#+!|~])", r"\\\1", text)


def _label(top: Top) -> dict[str, float]:
    """gr.Label's {class: confidence}."""
    return {name: (p or 0.0) for name, p in top}


def _session(request: gr.Request | None) -> str:
    return getattr(request, "session_hash", None) or "local"


def _number(value: Any, what: str, low: float, high: float, *, whole: bool = False) -> float:
    """`value` as a number in low..high (a whole one if asked), or a gr.Error naming `what` and its range."""
    try:
        x = float(value)
    except (TypeError, ValueError, OverflowError):
        x = math.nan
    if not low <= x <= high or (whole and x != int(x)):
        kind = "a whole number" if whole else "a number"
        raise gr.Error(f"{what} must be {kind} in {low:g}..{high:g}, got {str(value)[:20]}.")
    return x


def refuse_remote_files(inputs: Any) -> None:
    """A gr.Error for file data in an event's inputs that is not a file uploaded to this page.

    Gradio downloads a file whose path is an http(s) URL before any handler runs: past --max-upload-mb,
    and a request leaving the machine. A path on the server outside Gradio's upload folder is refused too
    (Gradio refuses those for API calls; this holds for every call)."""
    uploads = get_upload_folder()

    def check(file: dict) -> dict:
        path = file["path"]
        if "://" in path:
            raise gr.Error("A file given as a URL is refused (this page fetches nothing): upload the photo.")
        try:
            uploaded = is_in_or_equal(path, uploads)
        except (OSError, ValueError):  # a NUL byte, a path too long
            uploaded = False
        if not uploaded:
            raise gr.Error("A file given as a path on the server is refused: upload the photo.")
        return file

    client_utils.traverse(inputs, check, client_utils.is_file_obj)


class PageBlocks(gr.Blocks):
    """gr.Blocks whose events take file data only as uploads to this page (see refuse_remote_files) and
    whose server refuses to relay URLs (NoRemoteFileRoute), however it is launched."""

    async def preprocess_data(
        self, block_fn: Any, inputs: list[Any], state: Any, explicit_call: bool = False
    ) -> list[Any]:
        refuse_remote_files(inputs)  # before Gradio moves (or downloads) any file into its cache
        return await super().preprocess_data(block_fn, inputs, state, explicit_call)

    def launch(self, *args: Any, app_kwargs: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        app_kwargs = dict(app_kwargs or {})
        app_kwargs["middleware"] = [*app_kwargs.get("middleware", []), Middleware(NoRemoteFileRoute)]
        return super().launch(*args, app_kwargs=app_kwargs, **kwargs)


class NoRemoteFileRoute:
    """ASGI middleware: Gradio's /file= route fetches and relays any public http(s) URL it is given; this
    page serves its own files only, so that request is refused before Gradio sees it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and "://" in scope["path"].partition("/file=")[2]:
            refusal = PlainTextResponse("This page serves its own files only, not URLs.", status_code=403)
            await refusal(scope, receive, send)
            return
        await self.app(scope, receive, send)


class Page:
    """The handlers behind the page's components, for one set of served models."""

    def __init__(self, served: Sequence[actions.Served], settings: Settings) -> None:
        self.served, self.settings = list(served), settings
        self.names = [s.name for s in self.served]
        self.attacks = actions.page_attacks(self.served)
        self.guard = JobGuard(settings.job_timeout_s)
        for s in self.served:
            self.guard.watch(s.model)
        self.photos = test_photos(settings.data_dir)
        self.scratch = Scratch()  # files handed to Gradio, which serves copies of them

    @contextmanager
    def _job(self, request: gr.Request | None) -> Iterator[None]:
        """The visitor's job (one at a time); past the time limit it ends in a one-line gr.Error."""
        try:
            with self.guard.job(_session(request)):
                yield
        except TimedOut as e:
            raise gr.Error(
                f"Stopped: the job ran past this page's limit of {self.guard.timeout_s:g} s per job. Ask "
                "for fewer steps or samples (`birdshield serve --job-timeout` sets the limit)."
            ) from e

    def _photo(self, path: str | None, missing: str) -> Image.Image:
        if not path:
            raise gr.Error(missing)
        try:
            return actions.read_photo(path, self.settings.max_upload_mb)
        except data.BadImageError as e:
            raise gr.Error(actions.photo_error(e)) from e

    def _source(self, source: str, path: str | None, adv_path: str | None) -> Image.Image:
        if source == "adversarial":
            return self._photo(adv_path, "Run an attack first (Attack tab): its image is judged here.")
        return self._photo(path, "Upload a photo first.")

    def _scratch_file(self, name: str, content: bytes) -> str:
        return str(self.scratch.add(name, content))

    # ------------------------------------------------------------------------------------------- photo

    def pick_photo(self, name: str | None) -> str | None:
        """A test photo chosen by name becomes the upload: a copy in scratch space (only names from the
        list are accepted, so no visitor-given path is ever opened)."""
        if not name or name not in self.photos or self.settings.data_dir is None:
            return None
        source = _photo_root(self.settings.data_dir) / name
        return self._scratch_file(name.replace("/", " - "), source.read_bytes())  # keeps the species

    def predict(self, path: str | None, request: gr.Request) -> list[Any]:
        """Status line, then per model its top-5, then per model the image as it sees it."""
        n = len(self.served)
        if not path:
            return ["Upload a bird photo (JPEG, PNG, WebP, ...) to start.", *[None] * (2 * n)]
        try:
            photo = actions.read_photo(path, self.settings.max_upload_mb)
        except data.BadImageError as e:
            return [f"**⚠ {_plain(actions.photo_error(e))}**", *[None] * (2 * n)]
        with self._job(request):
            tops = actions.predict_image(self.served, photo)
        views = [actions.model_view(s.model, photo) for s in self.served]
        status = f"Photo **{_plain(Path(path).name)}**, {photo.width} × {photo.height} px"
        return [status, *map(_label, tops), *views]

    # ------------------------------------------------------------------------------------------- attack

    def attack(
        self,
        path: str | None,
        attack: str,
        norm: str,
        eps_255: float,
        eps_l2: float,
        steps: float,
        target: str,
        attacked: str,
        early_stop: bool,
        request: gr.Request,
    ) -> list[Any]:
        """Original | perturbation | adversarial, the PNG to download, a summary, each model's top-5."""
        if attack not in self.attacks:
            raise gr.Error(f"Unknown attack {str(attack)[:20]}; this page offers {', '.join(self.attacks)}.")
        if attacked not in self.names:
            raise gr.Error(f"No model called {str(attacked)[:40]}; attack one of {', '.join(self.names)}.")
        if norm == "linf":
            eps = _number(eps_255, "eps (Linf, in /255 grey levels)", 0, MAX_EPS_255) / 255
        else:
            eps = _number(eps_l2, "eps (L2)", 0, MAX_EPS_L2)
        n_steps = int(_number(steps, "steps", 0, MAX_STEPS, whole=True))
        photo = self._photo(path, "Upload a photo first.")
        try:
            with self._job(request):
                out = actions.attack_image(
                    self.served,
                    photo,
                    attack=attack,
                    eps=eps,
                    attacked=self.names.index(attacked),
                    norm=norm,
                    steps=n_steps or None,
                    target=None if target in (UNTARGETED, None) else target,
                    early_stop=bool(early_stop),
                )
        except Cancelled:
            return [gr.skip()] * 4 + ["Attack stopped."] + [gr.skip()] * len(self.served)
        except ValueError as e:
            raise gr.Error(str(e)) from e
        png = self._scratch_file(f"{Path(path or 'photo').stem}_{attack}.png", out.png())
        summary = _attack_summary(out, attack, norm, eps)
        return [out.original, out.perturbation, out.adversarial, png, summary, *map(_label, out.predictions)]

    def attack_options(self, attack: str, attacked: str) -> tuple[Any, Any, Any, Any]:
        """The attack's one-line summary, and the norms, steps and targets that fit it and the model."""
        if attack not in self.attacks:
            raise gr.Error(f"Unknown attack {str(attack)[:20]}; this page offers {', '.join(self.attacks)}.")
        spec = ATTACK_SPECS[attack]
        model = self.served[self.names.index(attacked) if attacked in self.names else 0].model
        targets = [UNTARGETED, *model.class_names] if spec.targeted else [UNTARGETED]
        return (
            gr.update(info=spec.summary),
            gr.update(choices=list(spec.norms), value=spec.norms[0]),
            gr.update(
                label=_steps_label(attack), interactive=bool({"steps", "n_queries"} & spec.options), value=0
            ),
            gr.update(choices=targets, value=UNTARGETED),
        )

    # ------------------------------------------------------------------------------------------- defend

    def defend(
        self,
        source: str,
        path: str | None,
        adv_path: str | None,
        transform: str,
        param: float,
        request: gr.Request,
    ) -> list[Any]:
        """The transformed image (as the first model sees it), then each model's top-5 through it."""
        if transform != "none" and transform not in TRANSFORM_NAMES:
            raise gr.Error(f"Unknown transform {str(transform)[:20]}; choose {', '.join(TRANSFORM_NAMES)}.")
        if transform != "none":  # the transform checks the rest (a median kernel is odd)
            what = f"{transform}: {DEFENSES[transform][0]}"
            param = _number(param, what, *PARAM_RANGES[transform], whole=True)
        try:
            defense = make_defense(transform, None if transform == "none" else param)
        except ValueError as e:
            raise gr.Error(str(e)) from e
        photo = self._source(source, path, adv_path)
        with self._job(request):
            tops = actions.predict_image(self.served, photo, defense=defense)
        view = actions.transformed_view(self.served[0].model, photo, defense)
        return [view, *map(_label, tops)]

    def estimate(self, n: float) -> str:
        n = int(_number(n, "n noisy samples", MIN_SAMPLES, MAX_SAMPLES, whole=True))
        seconds = actions.smoothing_seconds(self.served, n)
        text = f"Estimated time here: about **{seconds:.0f} s** (n = {n} + 100 samples per model)."
        limit = self.settings.job_timeout_s
        return text + (f" That is over this page's limit of {limit:g} s per job." if seconds > limit else "")

    def certify(
        self, source: str, path: str | None, adv_path: str | None, sigma: float, n: float, request: gr.Request
    ) -> list[Any]:
        """Per model: the vote shares, then a line with the answer and its certified radius."""
        if sigma not in SIGMAS:
            raise gr.Error(f"noise sigma must be one of {', '.join(f'{s:g}' for s in SIGMAS)}.")
        n = int(_number(n, "n noisy samples", MIN_SAMPLES, MAX_SAMPLES, whole=True))
        photo = self._source(source, path, adv_path)
        try:
            with self._job(request):
                certs = actions.certify_image(self.served, photo, sigma=float(sigma), n=n, alpha=ALPHA)
        except Cancelled:
            return [gr.skip()] * len(self.served) + ["Stopped."] * len(self.served)
        except ValueError as e:
            raise gr.Error(str(e)) from e
        return [*(_label(c.votes) for c in certs), *(_certificate_text(c, float(sigma)) for c in certs)]

    def stop(self, request: gr.Request) -> None:
        self.guard.stop(_session(request))

    # ------------------------------------------------------------------------------------------- reports

    def list_reports(self) -> Any:
        return gr.update(choices=reports.find_reports(self.settings.reports_dir), value=None)

    def open_report(self, name: str | None) -> tuple[str, list[tuple[Image.Image, str]]]:
        if not name:
            return "", []
        try:
            report = reports.open_report(self.settings.reports_dir, name)
            plots = [(data.read_rgb(p), p.name) for p in report.plots]
        except (ValueError, OSError) as e:  # BadImageError is a ValueError
            raise gr.Error(str(e)) from e
        return report.markdown, plots


def _steps_label(attack: str) -> str:
    spec = ATTACK_SPECS[attack]
    if "n_queries" in spec.options:
        return "queries (0 = its default, 1000)"
    if "steps" in spec.options:
        return f"steps (0 = its default, {spec.default_steps})"
    return "steps (none: one step)"


def _attack_summary(out: actions.AttackOutcome, attack: str, norm: str, eps: float) -> str:
    budget = format_eps(eps) if norm == "linf" else f"{eps:g}"
    goal = f"towards **{_plain(out.label)}**" if out.targeted else f"away from **{_plain(out.label)}**"
    verdict = "**fooled**" if out.fooled else "**not fooled**"
    shown = f"shown ×{out.magnification:.0f}" if out.magnification else "none: the image is unchanged"
    return (
        f"{attack}, {norm} eps {budget}, {goal}: the attacked model is {verdict} by the 8-bit image. "
        f"Change used: Linf {out.linf * 255:.2f}/255, L2 {out.l2:.3f} (perturbation {shown}). "
        f"Attack time {out.seconds:.2f} s."
    )


def _certificate_text(c: actions.Certificate, sigma: float) -> str:
    if c.prediction is None or c.radius is None:
        return f"**Abstains**: no class wins the n = {c.n} noisy votes significantly ({c.seconds:.1f} s)."
    return (
        f"**{_plain(c.prediction)}**, certified within L2 radius **{c.radius:.3f}** (sigma {sigma:g}, "
        f"n = {c.n}, {c.seconds:.1f} s): no change of the image that small can change the smoothed "
        f"answer, with probability {1 - ALPHA:g}."
    )


# ----------------------------------------------------------------------------------------------- layout


def build_page(served: Sequence[actions.Served], settings: Settings | None = None) -> gr.Blocks:
    """The page for these models (each panel shows every model side by side)."""
    page = Page(served, settings or Settings())
    job = {"concurrency_id": JOB, "concurrency_limit": 1}
    with PageBlocks(analytics_enabled=False, title="birdshield", delete_cache=(1800, 3600)) as blocks:
        gr.Markdown(INTRO)
        with gr.Row():
            photo = gr.File(
                label=f"Bird photo (up to {page.settings.max_upload_mb:g} MB)",
                file_types=sorted(data.IMAGE_EXTENSIONS),
                elem_id="photo",
                scale=2,
            )
            with gr.Column(scale=3):
                picker = gr.Dropdown(
                    page.photos,
                    value=None,
                    label="or a test photo from --data",
                    visible=bool(page.photos),
                    elem_id="picker",
                )
                status = gr.Markdown("Upload a bird photo (JPEG, PNG, WebP, ...) to start.", elem_id="status")
        with gr.Tabs():
            with gr.Tab("Predict", id="predict"):
                tops, views = [], []
                with gr.Row():
                    for s in page.served:
                        with gr.Column():
                            tops.append(
                                gr.Label(num_top_classes=actions.TOP_K, label=s.name, elem_classes="top")
                            )
                            views.append(
                                gr.Image(
                                    label=f"as {s.name} sees it ({s.model.image_size} px)",
                                    format="png",
                                    interactive=False,
                                    height=240,
                                )
                            )
            with gr.Tab("Attack", id="attack"):
                attack_ui = _attack_tab(page)
            with gr.Tab("Defend", id="defend"):
                defend_ui = _defend_tab(page)
            with gr.Tab("Reports", id="reports"):
                reports_ui = _reports_tab(page)

        picker.change(page.pick_photo, picker, photo, queue=False)
        photo.change(page.predict, photo, [status, *tops, *views], api_name="predict", **job)
        _wire_attack(page, photo, attack_ui, job)
        _wire_defend(page, photo, attack_ui["png"], defend_ui, job)
        reports_ui["refresh"].click(page.list_reports, None, reports_ui["choice"], queue=False)
        reports_ui["choice"].change(
            page.open_report, reports_ui["choice"], [reports_ui["text"], reports_ui["plots"]]
        )
    return blocks


def _attack_tab(page: Page) -> dict[str, Any]:
    names = list(actions.page_attacks(page.served))
    ui: dict[str, Any] = {}
    with gr.Row():
        ui["attack"] = gr.Dropdown(
            names,
            value="pgd" if "pgd" in names else names[0],
            label="attack",
            info=ATTACK_SPECS["pgd" if "pgd" in names else names[0]].summary,
            elem_id="attack-name",
        )
        ui["norm"] = gr.Radio(["linf", "l2"], value="linf", label="norm")
        ui["eps_255"] = gr.Slider(
            0, MAX_EPS_255, value=4, step=0.5, label="eps (Linf), in /255 grey levels", elem_id="eps"
        )
        ui["eps_l2"] = gr.Slider(
            0, MAX_EPS_L2, value=0.5, step=0.05, label="eps (L2), pixel units", visible=False
        )
        ui["steps"] = gr.Slider(0, MAX_STEPS, value=0, step=1, label=_steps_label(ui["attack"].value))
    with gr.Row():
        ui["attacked"] = gr.Radio(page.names, value=page.names[0], label="attack which model")
        ui["target"] = gr.Dropdown([UNTARGETED], value=UNTARGETED, label="target species")
        ui["early_stop"] = gr.Checkbox(
            False, label="stop at the first success (least change, least confident)"
        )
    with gr.Row():
        ui["run"] = gr.Button("Attack", variant="primary", elem_id="run-attack")
        ui["stop"] = gr.Button("Stop", variant="stop")
    with gr.Row():
        ui["original"] = gr.Image(
            label="original (as the attacked model sees it)", format="png", interactive=False
        )
        ui["perturbation"] = gr.Image(label="perturbation, magnified", format="png", interactive=False)
        ui["adversarial"] = gr.Image(
            label="adversarial (8-bit)", format="png", interactive=False, elem_id="adversarial"
        )
    ui["summary"] = gr.Markdown(elem_id="attack-summary")
    with gr.Row():
        ui["tops"] = [
            gr.Label(
                num_top_classes=actions.TOP_K,
                label=f"{s.name} on the adversarial image",
                elem_classes="adv-top",
            )
            for s in page.served
        ]
    ui["png"] = gr.File(label="adversarial image, lossless PNG (the exact pixels judged)", interactive=False)
    return ui


def _wire_attack(page: Page, photo: gr.File, ui: dict[str, Any], job: dict[str, Any]) -> None:
    inputs = [
        photo,
        ui["attack"],
        ui["norm"],
        ui["eps_255"],
        ui["eps_l2"],
        ui["steps"],
        ui["target"],
        ui["attacked"],
        ui["early_stop"],
    ]
    outputs = [ui["original"], ui["perturbation"], ui["adversarial"], ui["png"], ui["summary"], *ui["tops"]]
    run = ui["run"].click(page.attack, inputs, outputs, api_name="attack", **job)
    ui["stop"].click(page.stop, None, None, cancels=[run], queue=False)
    options = [ui["attack"], ui["norm"], ui["steps"], ui["target"]]
    for trigger in (ui["attack"], ui["attacked"]):
        trigger.change(page.attack_options, [ui["attack"], ui["attacked"]], options, queue=False)
    ui["norm"].change(
        lambda norm: (gr.update(visible=norm == "linf"), gr.update(visible=norm == "l2")),
        ui["norm"],
        [ui["eps_255"], ui["eps_l2"]],
        queue=False,
    )


def _defend_tab(page: Page) -> dict[str, Any]:
    ui: dict[str, Any] = {}
    ui["source"] = gr.Radio(
        ["photo", "adversarial"],
        value="photo",
        label="judge which image",
        info="adversarial: the last image the Attack tab made",
    )
    gr.Markdown("### Input transforms, applied before every model")
    with gr.Row():
        ui["transform"] = gr.Radio(["none", *TRANSFORM_NAMES], value="jpeg", label="transform")
        ui["param"] = gr.Number(DEFENSES["jpeg"][1], label=param_text("jpeg"), precision=None)
        ui["run"] = gr.Button("Predict through the transform", variant="primary")
    with gr.Row():
        ui["view"] = gr.Image(label="after the transform", format="png", interactive=False, height=240)
        ui["tops"] = [gr.Label(num_top_classes=actions.TOP_K, label=s.name) for s in page.served]
    gr.Markdown(
        "### Randomized smoothing\nA vote over n noisy copies (Cohen et al. 2019): the answer, or an "
        "abstention when the vote is not clear, and the L2 radius within which no change can alter it."
    )
    with gr.Row():
        ui["sigma"] = gr.Dropdown(SIGMAS, value=0.25, label="noise sigma (pixel units)")
        ui["n"] = gr.Slider(MIN_SAMPLES, MAX_SAMPLES, value=1000, step=100, label="n noisy samples")
        ui["estimate"] = gr.Markdown(page.estimate(1000))
    with gr.Row():
        ui["certify"] = gr.Button("Certify", variant="primary")
        ui["stop"] = gr.Button("Stop", variant="stop")
    with gr.Row():
        ui["votes"], ui["certs"] = [], []
        for s in page.served:
            with gr.Column():
                ui["votes"].append(gr.Label(num_top_classes=3, label=f"{s.name}: vote shares"))
                ui["certs"].append(gr.Markdown())
    return ui


def _wire_defend(
    page: Page, photo: gr.File, adv_png: gr.File, ui: dict[str, Any], job: dict[str, Any]
) -> None:
    ui["transform"].change(
        lambda t: (
            gr.update(value=DEFENSES[t][1], label=param_text(t)) if t != "none" else gr.update(label="-")
        ),
        ui["transform"],
        ui["param"],
        queue=False,
    )
    sources = [ui["source"], photo, adv_png]
    ui["run"].click(
        page.defend,
        [*sources, ui["transform"], ui["param"]],
        [ui["view"], *ui["tops"]],
        api_name="defend",
        **job,
    )
    ui["n"].change(page.estimate, ui["n"], ui["estimate"], queue=False)
    run = ui["certify"].click(
        page.certify,
        [*sources, ui["sigma"], ui["n"]],
        [*ui["votes"], *ui["certs"]],
        api_name="certify",
        **job,
    )
    ui["stop"].click(page.stop, None, None, cancels=[run], queue=False)


def _reports_tab(page: Page) -> dict[str, Any]:
    ui: dict[str, Any] = {}
    with gr.Row():
        ui["choice"] = gr.Dropdown(
            reports.find_reports(page.settings.reports_dir),
            value=None,
            label=f"report folder under {page.settings.reports_dir} (written by evaluate or certify)",
            scale=4,
        )
        ui["refresh"] = gr.Button("Refresh", scale=1)
    ui["plots"] = gr.Gallery(label="plots", columns=2, format="png", height=520, object_fit="contain")
    ui["text"] = gr.Markdown()
    return ui


# ----------------------------------------------------------------------------------------------- launch


def launch(
    served: Sequence[actions.Served],
    settings: Settings | None = None,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    block: bool = True,
) -> tuple[gr.Blocks, str]:
    """Serve the page and print its URL; returns (blocks, URL) once it listens (block=False), or after
    Ctrl+C (block=True)."""
    settings = settings or Settings()
    warning = host_warning(host)
    if warning:
        print(warning, file=sys.stderr)
    blocks = build_page(served, settings)
    blocks.queue(default_concurrency_limit=1, max_size=32)
    _, url, _ = blocks.launch(
        server_name=host,
        server_port=port,
        share=False,
        inbrowser=False,
        max_file_size=int(settings.max_upload_mb * actions.MB),
        prevent_thread_lock=True,
        quiet=True,
        ssr_mode=False,
        pwa=False,
        mcp_server=False,
        enable_monitoring=False,
        run_history=False,
        show_error=True,
    )
    print(f"birdshield page: {url}  (Ctrl+C to stop)", flush=True)
    if block:
        blocks.block_thread()
    return blocks, url

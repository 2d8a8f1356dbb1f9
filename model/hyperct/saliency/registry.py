"""The saliency methods as users see them (name, one-line description, cost). No heavy imports:
the viewer and the command line list the methods before anything is computed."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Method:
    """A saliency method as users see it: its name, a one-line description and its cost."""

    id: str
    name: str
    description: str
    batched: bool  # all requested findings in one pass
    grid: str  # "token" (55 x 9 x 9) or "pixel" (165 x 144 x 144)


METHODS: dict[str, Method] = {
    m.id: m
    for m in (
        Method(
            "gradcam",
            "Grad-CAM",
            "captum Grad-CAM on the last block's tokens, channel weights over the whole scan (the "
            "fastest; all findings in one pass)",
            True,
            "token",
        ),
        Method(
            "attention",
            "Attention relevance",
            "Gradient-weighted attention (Chefer et al. 2021): which patches feed the CLS token the "
            "finding is read from, through every block (the default: with demo v0.8 and v0.9 its peak lies "
            "inside the lesion most often, with v0.10 as often as the token gradient's; also the default "
            "until v0.4)",
            True,
            "token",
        ),
        Method(
            "token_gradient",
            "Token gradient",
            "Fast: how strongly the finding's score responds to each patch token of an early block (the default "
            "from demo v0.4 to v0.7; with v0.8 to v0.10 its top tokens move the score more than attention's)",
            True,
            "token",
        ),
        Method(
            "input_x_gradient",
            "Input x gradient",
            "captum |input x gradient| on the pixels (one pass per finding)",
            False,
            "pixel",
        ),
        Method(
            "integrated_gradients",
            "Integrated gradients",
            "captum integrated gradients from a blurred copy of the scan (slow: 16 passes per finding)",
            False,
            "pixel",
        ),
        Method(
            "occlusion",
            "Occlusion",
            "captum occlusion: the score's drop when each patch is blurred away (slowest: one "
            "image pass per patch)",
            False,
            "token",
        ),
    )
}
DEFAULT_METHOD = "attention"  # benchmarks/results/saliency_demo_v08*.json; the model card says why

"""The words of the app: title, explanations at the top of each tab, labels."""

from __future__ import annotations

TITLE = "D-FINE explorer"

INTRO = """\
# D-FINE explorer
**D-FINE** (Peng et al., 2024) is a real-time DETR-style detector that does not regress box \
coordinates directly: each of a box's four edges is a *probability distribution* that every \
decoder layer refines (**FDR**, fine-grained distribution refinement), and during training the \
last layer teaches the earlier ones (**GO-LSD**). Detect objects in an image, then open the \
analysis tabs to watch this happen. Everything runs on this server's CPU.
"""

DETECT = """\
Upload a photo, use the webcam or paste an image, pick a model and press **Detect**. \
Click a box in the result to open its edge distributions. Boxes are in pixels of your image \
(x1, y1 = top-left corner; x2, y2 = bottom-right).
"""

SHARED_INPUTS = (
    "*Uses the image, model, input size, threshold, detection limit and letterbox of the Detect "
    "tab.*"
)

REFINEMENT = f"""\
### How a box is refined, stage by stage
The encoder proposes an initial box **b0** for each of the 300 queries; the first decoder \
layer's ordinary box head turns it into the **pre-head** box, the fixed reference from which \
every layer measures its edge offsets. Each decoder layer then *adds* residual logits to the \
previous layer's edge distributions, and the box is their expectation. Move the **stage** \
slider: solid boxes are the chosen stage, dashed ones the stage before. The chart shows how \
close every stage already is to the final box (IoU) and how far each edge moved (pixels, \
+ = outward). {SHARED_INPUTS}
"""

DISTRIBUTIONS = f"""\
### Each edge is a probability distribution
For every box edge (left, top, right, bottom) the decoder predicts probabilities over \
**reg_max + 1 = 33 bins**. Bin *n* stands for moving the edge outward by \
**W(n) · box size / reg_scale** from the pre-head box, so the x axis below is in **pixels of \
your image** and the bins are dense near 0 (small corrections) and sparse far out. The \
predicted edge is the expectation (◆); each layer refines the previous layer's distribution \
residually, usually sharpening it. The spread **σ** is the model's own uncertainty about that \
edge: the overlay draws every edge as a band of ±k·σ. Pick a detection, or click a box in the \
Detect tab. {SHARED_INPUTS}
"""

WEIGHTING = """\
### The weighting function W(n)
W(n) decides which edge displacement each of the reg_max + 1 bins stands for. It is \
symmetric around the middle bin (no movement), with steps that grow geometrically away from it \
(ratio (a + 1)^(2/(reg_max − 2)), a = up · reg_scale): fine resolution for the small \
corrections most boxes need, and a range of ±2a for the rare large ones. GFocal's evenly \
spaced bins (grey) spend their resolution uniformly. Values are in units of the box size \
divided by reg_scale. The red circles are the W(n) of the model selected in the Detect tab.
"""

GOLSD = f"""\
### GO-LSD: the last layer teaches the earlier ones
During training, D-FINE distils its **final layer** (teacher) into every **earlier layer** \
(students): each student's edge distributions are pulled towards the teacher's, both softened \
by a temperature T, with a KL divergence. Queries matched to a ground-truth box (the union of \
the Hungarian matches of all layers) are weighted by the IoU of their box with it; unmatched \
queries by the teacher's confidence. Shown here for one image, computed by the same functions \
as the training loss. Ground truth comes from the annotations of the synthetic examples, or \
— for any other image — from the model's own detections (**pseudo ground truth**, clearly \
labelled). {SHARED_INPUTS}
"""

ATTENTION = f"""\
### Where the decoder looks
Each decoder layer reads the image features at a few **sampling points** per attention head \
around the box it refines (deformable attention), on every feature level: fine (stride 8) to \
coarse (stride 32). Pick a detection (or click a box) and move the **layer** slider: the points \
are coloured by level and sized by their weight; the heat maps show how much of the attention \
fell on each feature cell. **Where the query came from**: the encoder scores every position \
(objectness) and keeps the top 300 as queries, each with an initial box b0. **Why there is no \
duplicate**: in self-attention each query looks at the others; a query that sees a stronger one \
on the same object learns to lower its own score, so no NMS is needed. {SHARED_INPUTS}
"""

MODEL = """\
### Models
The **default** model is loaded at start-up. Official checkpoints from the D-FINE model zoo \
are downloaded on first use (where the server can reach GitHub) and cached; or upload your \
own `.pth` (reference layout) or `.safetensors` (this project) checkpoint — it is loaded \
weights-only, never unpickled. The selected model is used by every tab.

**The paper's ablation variants** (`--ablate fdr`: RT-DETR-style box deltas; `--ablate golsd`: FDR without self-distillation) are not bundled: `python scripts/ablation.py --out runs/ablation` in a checkout trains them beside the full model with the same data, schedule and seeds (about 35 min per model on 2 CPU cores; `dfine train --ablate fdr …` trains one). Upload a run's `final.safetensors` here, then pick it as the second model under **Compare with a second model** in the Refinement, Distributions or Evaluate tab.
"""

TARGET_MODES = [
    ("auto: annotations when the image has them, else pseudo ground truth", "auto"),
    ("annotations (the synthetic examples)", "annotations"),
    ("pseudo ground truth: the model's own detections", "pseudo"),
]

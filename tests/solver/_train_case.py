"""A tiny ImageData training case written into a folder: PNGs made with cv2, a list,
a net (conv -> ReLU -> Dropout -> InnerProduct -> SoftmaxWithLoss) and a solver."""
from __future__ import annotations

import os
import textwrap

import numpy as np

NET = textwrap.dedent("""\
    name: "tiny"
    layer {{ name: "data" type: "ImageData" top: "data" top: "label" include {{ phase: TRAIN }}
      transform_param {{ crop_size: 6 mirror: true scale: 0.00390625 }}
      image_data_param {{ source: "{train_list}" root_folder: "{root}" batch_size: {batch}
        new_height: 8 new_width: 8 shuffle: true }} }}
    layer {{ name: "data" type: "ImageData" top: "data" top: "label" include {{ phase: TEST }}
      transform_param {{ crop_size: 6 scale: 0.00390625 }}
      image_data_param {{ source: "{test_list}" root_folder: "{root}" batch_size: 6
        new_height: 8 new_width: 8 }} }}
    layer {{ name: "conv" type: "Convolution" bottom: "data" top: "conv"
      convolution_param {{ num_output: 4 kernel_size: 3 weight_filler {{ type: "gaussian" std: 0.1 }} }} }}
    layer {{ name: "relu" type: "ReLU" bottom: "conv" top: "conv" }}
    {dropout}
    layer {{ name: "ip" type: "InnerProduct" bottom: "conv" top: "ip"
      inner_product_param {{ num_output: 3 weight_filler {{ type: "xavier" }} }} }}
    layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }}
    layer {{ name: "acc" type: "Accuracy" bottom: "ip" bottom: "label" top: "acc" include {{ phase: TEST }} }}
    """)
DROPOUT = 'layer { name: "drop" type: "Dropout" bottom: "conv" top: "conv" dropout_param { dropout_ratio: 0.3 } }'

SOLVER = dict(test_iter=2, test_interval=5, base_lr=0.05, momentum=0.9, lr_policy="step", gamma=0.5,
              stepsize=5, max_iter=12, snapshot=4, snapshot_prefix="snaps/tiny", random_seed=3, display=0)


def write_images(d: str, n: int = 12) -> list:
    """n 10x10 colour PNGs whose brightness tells the class (i % 3); returns the list lines."""
    import cv2
    os.makedirs(os.path.join(d, "img"), exist_ok=True)
    rng = np.random.default_rng(0)
    lines = []
    for i in range(n):
        lab = i % 3
        img = (rng.integers(0, 80, (10, 10, 3)) + 60 * lab).astype(np.uint8)
        cv2.imwrite(os.path.join(d, "img", f"{i}.png"), img)
        lines.append(f"img/{i}.png {lab}")
    return lines


def solver_text(**fields) -> str:
    out = []
    for k, v in fields.items():
        if v is None:
            continue
        for x in (v if isinstance(v, (list, tuple)) else [v]):
            out.append(f'{k}: "{x}"' if isinstance(x, str) and k not in ("solver_mode",) else f"{k}: {x}")
    return "\n".join(out) + "\n"


def make_case(d: str, *, dropout: bool = True, batch: int = 4, n_images: int = 12, net_name: str = "net.prototxt",
              **solver_fields) -> str:
    """Write the case under ``d`` (paths in the files relative to ``d``); returns the solver path."""
    lines = write_images(d, n_images)
    with open(os.path.join(d, "list.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(d, net_name), "w") as f:
        f.write(NET.format(train_list="list.txt", test_list="list.txt", root=d + "/", batch=batch,
                           dropout=DROPOUT if dropout else ""))
    os.makedirs(os.path.join(d, "snaps"), exist_ok=True)
    fields = dict(SOLVER, net=net_name)
    fields.update(solver_fields)
    sp = os.path.join(d, "solver.prototxt")
    with open(sp, "w") as f:
        f.write(solver_text(**fields))
    return sp

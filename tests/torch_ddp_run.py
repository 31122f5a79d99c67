"""Distil with `torch.nn.parallel.DistributedDataParallel` around the student.

Run one process as `KERAS_BACKEND=torch python -m tests.torch_ddp_run OUTPUT_DIR
single`, which trains with `Distiller.fit`, and `world_size` processes as
`... OUTPUT_DIR ddp RANK WORLD_SIZE RENDEZVOUS_FILE`, which join a gloo
process group through the file and train with the loop of
`docs/distributed.md`: each rank runs the frozen teacher and the DDP-wrapped
student on its share of the batch, and DDP averages the gradients.
"""

import os
import sys

import numpy as np
import torch
import torch.distributed as torch_distributed

from tests.distribution_run import BatchLosses
from tests.distribution_run import build_dense_distiller

BATCH_SIZE = 8
STEPS = 4


def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(BATCH_SIZE * STEPS, 6)).astype("float32")
    y = rng.integers(0, 16, size=(BATCH_SIZE * STEPS,)).astype("int32")
    return x, y


def save(path, distiller, losses, initial_teacher):
    arrays = {"losses": np.array(losses, dtype="float64")}
    arrays.update({f"student_{i}": w for i, w in enumerate(distiller.student.get_weights())})
    arrays.update({f"teacher_{i}": w for i, w in enumerate(distiller.teacher.get_weights())})
    arrays.update({f"teacher_initial_{i}": w for i, w in enumerate(initial_teacher)})
    np.savez(path, **arrays)


def train_single(output_dir):
    distiller = build_dense_distiller()
    initial_teacher = distiller.teacher.get_weights()
    x, y = data()
    recorder = BatchLosses()
    distiller.fit(
        x, y, batch_size=BATCH_SIZE, epochs=1, shuffle=False, verbose=0,
        callbacks=[recorder],
    )
    save(os.path.join(output_dir, "single.npz"), distiller, recorder.losses, initial_teacher)


def train_ddp(output_dir, rank, world_size, rendezvous_file):
    torch_distributed.init_process_group(
        "gloo", init_method=f"file://{rendezvous_file}", rank=rank, world_size=world_size
    )
    distiller = build_dense_distiller()
    initial_teacher = distiller.teacher.get_weights()
    student = torch.nn.parallel.DistributedDataParallel(distiller.student)
    optimizer = distiller.optimizer
    trainable = distiller.student.trainable_variables
    optimizer.build(trainable)

    x, y = data()
    local = BATCH_SIZE // world_size
    losses, total_losses = [], []
    for step in range(STEPS):
        start = step * BATCH_SIZE + rank * local
        x_local = torch.from_numpy(x[start : start + local])
        y_local = torch.from_numpy(y[start : start + local])

        student_logits = student(x_local, training=True)
        distiller.zero_grad()
        loss = distiller.compute_loss(x=x_local, y=y_local, y_pred=student_logits)
        loss.backward()
        with torch.no_grad():
            optimizer.apply([v.value.grad for v in trainable], trainable)

        # `fit` logs running means over the epoch, averaged here over ranks
        # that each hold an equal share of every batch.
        total_losses.append(loss.detach())
        logged = torch.stack(
            [
                torch.stack(total_losses).mean(),
                distiller.distillation_loss_tracker.result().detach(),
                distiller.student_loss_tracker.result().detach(),
            ]
        )
        torch_distributed.all_reduce(logged)
        losses.append((logged / world_size).tolist())

    save(os.path.join(output_dir, f"ddp_{rank}.npz"), distiller, losses, initial_teacher)
    torch_distributed.barrier()
    # NOTE: with torch 2.13 on CPU, `destroy_process_group` or the
    # interpreter's shutdown after it sometimes never returned here, with both
    # ranks done, so each rank leaves at once after the barrier.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    torch.set_num_threads(1)
    if sys.argv[2] == "single":
        train_single(sys.argv[1])
    else:
        train_ddp(sys.argv[1], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])

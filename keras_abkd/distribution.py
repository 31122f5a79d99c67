"""`DistillationParallel`: one device mesh, separate layouts for teacher and student.

`keras.distribution.ModelParallel` looks variable layouts up by
`variable.path`, and a teacher and a student of the same family share their
paths (`token_embedding/embeddings`, `transformer_layer_0/...`), so one
`LayoutMap` cannot shard the teacher and replicate the student. This module
lays out the variables each model creates inside `teacher_scope()` or
`student_scope()` by that model's own rule, on one mesh, and checks that
every layout divides the weight it splits.
"""

import contextlib
import logging
import math
import numbers

import keras

logger = logging.getLogger(__name__)

TEACHER = "teacher"
STUDENT = "student"

# The generic rule: the axis that each kind of rank-2 weight splits over the
# model axis, keyed by the last part of the variable path.
#   kernel               Dense `(inputs, units)`: units, so Dense output
#                        logits are split along the vocabulary.
#   embeddings           Embedding `(vocabulary, dim)`: vocabulary.
#   reverse_embeddings   KerasHub's untied output embedding
#                        `(dim, vocabulary)`: vocabulary.
_GENERIC_SPLIT_AXIS = {"kernel": 1, "embeddings": 0, "reverse_embeddings": 1}


def generic_layout_axes(path, shape, model_axis="model"):
    """Return the generic layout of a Dense or Embedding weight, or None.

    Rank-2 `kernel` weights (`Dense`) are split along their units,
    `embeddings` (`Embedding`) and KerasHub `reverse_embeddings` along the
    vocabulary. Every other weight (biases, norms, `EinsumDense` kernels of
    rank 3, convolutions) gets None and is replicated.

    Args:
        path: The variable path, such as `"dense_1/kernel"`.
        shape: The variable shape.
        model_axis: Name of the mesh axis that splits the weight.

    Returns:
        A tuple of mesh axis names and None, one per weight axis, or None.
    """
    name = path.rsplit("/", 1)[-1]
    if len(shape) != 2 or name not in _GENERIC_SPLIT_AXIS:
        return None
    axes = [None, None]
    axes[_GENERIC_SPLIT_AXIS[name]] = model_axis
    return tuple(axes)


def _mesh_axis_sizes(device_mesh):
    return dict(zip(device_mesh.axis_names, device_mesh.shape))


def _shards(axis, sizes):
    """Return the number of pieces a layout entry splits a weight axis into."""
    names = axis if isinstance(axis, (tuple, list)) else (axis,)
    return math.prod(sizes[name] for name in names)


def _replicated(shape):
    return tuple(None for _ in shape)


def find_indivisible_axis(shape, axes, device_mesh):
    """Return `(axis, mesh_axis, shards)` for the first split that fails, or None.

    A split fails when the number of devices along the mesh axis does not
    divide the size of the weight axis it splits.
    """
    sizes = _mesh_axis_sizes(device_mesh)
    for index, (size, mesh_axis) in enumerate(zip(shape, axes)):
        if mesh_axis is None:
            continue
        shards = _shards(mesh_axis, sizes)
        if size % shards:
            return index, mesh_axis, shards
    return None


def check_layout(role, path, shape, axes, device_mesh):
    """Raise `ValueError` when `axes` cannot lay out a weight of `shape`.

    Args:
        role: `"teacher"` or `"student"`, used in the message.
        path: The variable path.
        shape: The variable shape.
        axes: Mesh axis names or None, one per weight axis.
        device_mesh: The `keras.distribution.DeviceMesh`.
    """
    shape = tuple(shape)
    axes = tuple(axes)
    if len(axes) > len(shape):
        raise ValueError(
            f"The layout {axes} of the {role} weight {path!r} names "
            f"{len(axes)} axes, but the weight has shape {shape}. Give one "
            "mesh axis name or None per weight axis."
        )
    sizes = _mesh_axis_sizes(device_mesh)
    for axis in axes:
        names = axis if isinstance(axis, (tuple, list)) else (axis,)
        unknown = [name for name in names if name is not None and name not in sizes]
        if unknown:
            raise ValueError(
                f"The layout {axes} of the {role} weight {path!r} names the "
                f"mesh axis {unknown[0]!r}, but the mesh has the axes "
                f"{tuple(device_mesh.axis_names)}. Use those names."
            )
    failure = find_indivisible_axis(shape, axes, device_mesh)
    if failure is None:
        return
    index, mesh_axis, shards = failure
    replicated_axes = tuple(None if i == index else a for i, a in enumerate(axes))
    raise ValueError(
        f"Cannot lay out the {role} weight {path!r} of shape {shape} as "
        f"{axes}: its axis {index} (size {shape[index]}) is split over the "
        f"mesh axis {mesh_axis!r} of {shards} devices, and {shards} does not "
        f"divide {shape[index]}. Use a mesh whose {mesh_axis!r} axis size "
        f"divides {shape[index]}, or give this weight a layout that does not "
        f"split that axis, such as layout_map[{path!r}] = {replicated_axes}."
    )


def _backbone_layout_source(source):
    """Return the object whose `get_layout_map` lays out `source`, or None.

    Accepts a KerasHub backbone and a KerasHub task, whose class names its
    backbone class in `backbone_cls`, each as a class or an instance.
    """
    for candidate in (source, getattr(source, "backbone_cls", None)):
        if callable(getattr(candidate, "get_layout_map", None)):
            return candidate
    return None


def _is_model_or_model_class(source):
    if isinstance(source, type):
        return issubclass(source, keras.Model)
    return isinstance(source, keras.Model)


def default_device_mesh(model_parallel=None, batch_axis="batch", model_axis="model"):
    """Build a `(batch, model)` mesh over every device `keras` lists.

    Args:
        model_parallel: Number of devices along the model axis, which must
            divide the number of devices. Defaults to all of them, which
            splits the teacher as finely as the devices allow and leaves one
            data-parallel group.
        batch_axis: Name of the data-parallel axis. Defaults to `"batch"`.
        model_axis: Name of the model-parallel axis. Defaults to `"model"`.

    Returns:
        A `keras.distribution.DeviceMesh` of shape
        `(devices // model_parallel, model_parallel)`.
    """
    devices = keras.distribution.list_devices()
    count = len(devices)
    if model_parallel is None:
        model_parallel = count
    if (
        isinstance(model_parallel, bool)
        or not isinstance(model_parallel, numbers.Integral)
        or model_parallel < 1
        or count % model_parallel
    ):
        raise ValueError(
            f"model_parallel must be a positive integer that divides the "
            f"number of devices, {count}, got model_parallel={model_parallel!r}. "
            f"Pick one of {[n for n in range(1, count + 1) if count % n == 0]}."
        )
    model_parallel = int(model_parallel)
    return keras.distribution.DeviceMesh(
        shape=(count // model_parallel, model_parallel),
        axis_names=(batch_axis, model_axis),
        devices=devices,
    )


class DistillationParallel(keras.distribution.ModelParallel):
    """Lay out a teacher and a student on one device mesh, each by its own rule.

    A `keras.distribution.ModelParallel` whose variable layouts depend on the
    model being created. Variables created inside `teacher_scope()` follow
    `teacher_layout`, and those created inside `student_scope()` follow
    `student_layout`. All others are replicated, such as the distiller's
    metrics. The optimizer's slots copy the layout of their weight. The
    batch is split along `batch_axis`. Before a weight is created, its
    layout is checked against its shape, and a layout that does not divide
    it raises a `ValueError` naming the weight, its shape and the mesh axis.

    A layout is one of:

    - `"auto"`: the generic rule of `generic_layout_axes`: rank-2 `Dense`
      kernels split along their units and embeddings along the vocabulary,
      on the model axis. The generic rule keeps a weight replicated, and
      logs a warning, when the model axis does not divide the axis it
      would split.
    - a KerasHub backbone or task, class or instance, such as
      `keras_hub.models.Llama3CausalLM`: its backbone's `get_layout_map`
      (in keras-hub 0.32: Llama, Llama 3, Gemma, Qwen, Qwen2, Qwen-MoE and
      Qwen3-MoE). A model without one, such as a `GPT2CausalLM`, gets the
      generic rule.
    - a `keras.distribution.LayoutMap` on the same mesh.
    - None: every weight replicated. This is the default for the student,
      which then trains data parallel along the batch axis.

    Layer output layouts in a `LayoutMap` are not applied, because teacher
    and student layers can share their paths.

    This runs on the JAX backend only, as `keras.distribution` does in
    Keras 3.15. TensorFlow and PyTorch have their own routes, described in
    `docs/distributed.md`.

    Args:
        device_mesh: Optional `keras.distribution.DeviceMesh` with the axes
            `batch_axis` and (for sharded layouts) `model_axis`. Defaults to
            `default_device_mesh(model_parallel, batch_axis, model_axis)`,
            or the mesh of a `LayoutMap` given as a layout.
        model_parallel: Number of devices along the model axis of the
            default mesh. Defaults to all devices. Only used without
            `device_mesh`.
        teacher_layout: Layout of the teacher's weights. Defaults to
            `"auto"`.
        student_layout: Layout of the student's weights. Defaults to None.
        batch_axis: Name of the mesh axis that splits the batch. Defaults to
            `"batch"`.
        model_axis: Name of the mesh axis that splits the weights. Defaults
            to `"model"`.
        auto_shard_dataset: As in `keras.distribution.ModelParallel`.

    Example:

    ```python
    from keras_abkd.distribution import DistillationParallel

    distribution = DistillationParallel(
        model_parallel=4, teacher_layout=keras_hub.models.Llama3CausalLM
    )
    keras.distribution.set_distribution(distribution)
    with distribution.teacher_scope():
        teacher = keras_hub.models.Llama3CausalLM.from_preset("llama3.1_8b")
    with distribution.student_scope():
        student = keras_hub.models.Llama3CausalLM.from_preset("llama3.2_1b")
    distiller = keras_abkd.hub.HubDistiller(teacher, student)
    distiller.compile(optimizer="adam")
    distiller.fit(data, batch_size=8)
    ```
    """

    def __init__(
        self,
        device_mesh=None,
        model_parallel=None,
        teacher_layout="auto",
        student_layout=None,
        batch_axis="batch",
        model_axis="model",
        auto_shard_dataset=True,
    ):
        if keras.backend.backend() != "jax":
            raise ValueError(
                "DistillationParallel needs the JAX backend, because "
                "keras.distribution lays out variables only there, got "
                f"KERAS_BACKEND={keras.backend.backend()!r}. Set "
                "KERAS_BACKEND=jax, or use tf.distribute.MirroredStrategy "
                "(TensorFlow) or torch.distributed (PyTorch)."
            )
        if device_mesh is not None and model_parallel is not None:
            raise ValueError(
                "Pass either device_mesh or model_parallel, not both: "
                "model_parallel sets the shape of the default mesh."
            )
        if device_mesh is None:
            device_mesh = self._mesh_of_layout_maps(teacher_layout, student_layout)
        if device_mesh is None:
            device_mesh = default_device_mesh(model_parallel, batch_axis, model_axis)
        if not isinstance(device_mesh, keras.distribution.DeviceMesh):
            raise ValueError(
                "device_mesh must be a keras.distribution.DeviceMesh, got "
                f"{type(device_mesh).__name__}."
            )
        if batch_axis not in device_mesh.axis_names:
            raise ValueError(
                f"batch_axis={batch_axis!r} is not an axis of the mesh, whose "
                f"axes are {tuple(device_mesh.axis_names)}. Pass the name of "
                "the axis that splits the batch."
            )

        super().__init__(
            layout_map=keras.distribution.LayoutMap(device_mesh),
            batch_dim_name=batch_axis,
            auto_shard_dataset=auto_shard_dataset,
        )
        self.model_axis = model_axis
        self._rules = {
            TEACHER: self._make_rule(TEACHER, teacher_layout),
            STUDENT: self._make_rule(STUDENT, student_layout),
        }
        self._role = None

    @staticmethod
    def _mesh_of_layout_maps(*layouts):
        meshes = [
            layout.device_mesh
            for layout in layouts
            if isinstance(layout, keras.distribution.LayoutMap)
        ]
        return meshes[0] if meshes else None

    def _check_model_axis(self, role):
        if self.model_axis not in self.device_mesh.axis_names:
            raise ValueError(
                f"The {role} layout splits weights over model_axis="
                f"{self.model_axis!r}, which is not an axis of the mesh, "
                f"whose axes are {tuple(self.device_mesh.axis_names)}. Pass "
                f"model_axis=..., or {role}_layout=None to replicate the "
                f"{role}."
            )

    def _make_rule(self, role, layout):
        """Return a function of a variable that returns its axes, or None."""
        if layout is None:
            return None
        if isinstance(layout, keras.distribution.LayoutMap):
            if layout.device_mesh is not self.device_mesh:
                raise ValueError(
                    f"The {role} LayoutMap was built on another device mesh. "
                    "Build every LayoutMap on the mesh passed as device_mesh."
                )
            return self._layout_map_rule(layout)

        backbone = None
        if isinstance(layout, str):
            if layout != "auto":
                raise ValueError(
                    f'{role}_layout must be "auto", None, a LayoutMap or a '
                    f"KerasHub backbone or task, got {role}_layout={layout!r}."
                )
        elif _is_model_or_model_class(layout):
            backbone = _backbone_layout_source(layout)
        else:
            raise ValueError(
                f'{role}_layout must be "auto", None, a LayoutMap or a KerasHub '
                f"backbone or task, got {type(layout).__name__}."
            )

        self._check_model_axis(role)
        if backbone is not None:
            layout_map = backbone.get_layout_map(
                self.device_mesh,
                model_parallel_dim_name=self.model_axis,
                data_parallel_dim_name=self.batch_dim_name,
            )
            return self._layout_map_rule(layout_map)
        return self._generic_rule(role)

    @staticmethod
    def _layout_map_rule(layout_map):
        def rule(variable):
            layout = layout_map[variable.path]
            return None if layout is None else tuple(layout.axes)

        return rule

    def _generic_rule(self, role):
        def rule(variable):
            axes = generic_layout_axes(variable.path, variable.shape, self.model_axis)
            if axes is None:
                return None
            failure = find_indivisible_axis(variable.shape, axes, self.device_mesh)
            if failure is not None:
                index, mesh_axis, shards = failure
                logger.warning(
                    "Keeping the %s weight %r of shape %s replicated: the mesh "
                    "axis %r of %d devices does not divide its axis %d.",
                    role,
                    variable.path,
                    tuple(variable.shape),
                    mesh_axis,
                    shards,
                    index,
                )
                return None
            return axes

        return rule

    @contextlib.contextmanager
    def _role_scope(self, role):
        previous = self._role
        self._role = role
        try:
            with self.scope():
                yield
        finally:
            self._role = previous

    def teacher_scope(self):
        """Return a context in which new variables follow `teacher_layout`.

        The context also makes this distribution current. Create (or load)
        the teacher inside it.
        """
        return self._role_scope(TEACHER)

    def student_scope(self):
        """Return a context in which new variables follow `student_layout`."""
        return self._role_scope(STUDENT)

    def get_variable_layout(self, variable):
        layout = getattr(variable, "_layout", None)
        if layout is not None:
            return layout
        shape = tuple(variable.shape)
        rule = self._rules.get(self._role)
        axes = None if rule is None else rule(variable)
        if axes is None:
            axes = _replicated(shape)
        else:
            check_layout(self._role, variable.path, shape, axes, self.device_mesh)
            # Unnamed trailing weight axes are not split.
            axes = tuple(axes) + (None,) * (len(shape) - len(axes))
        return keras.distribution.TensorLayout(axes, self.device_mesh)

    def get_tensor_layout(self, path):
        return None

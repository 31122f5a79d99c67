"""Registry of sweep tasks by name."""

_TASKS = {}


def register_task(name):
    """Return a class decorator that registers a `SweepTask` subclass as `name`.

    The class is instantiated with the task's keyword settings by
    `get_task(name, **settings)`.

    Raises:
        ValueError: when `name` is already registered to another class.
    """

    def decorator(cls):
        existing = _TASKS.get(name)
        if existing is not None and existing is not cls:
            raise ValueError(
                f"A sweep task named {name!r} is already registered "
                f"({existing.__module__}.{existing.__qualname__}). Pick another name."
            )
        cls.name = name
        _TASKS[name] = cls
        return cls

    return decorator


def task_names():
    """Return the registered task names, sorted."""
    return sorted(_TASKS)


def get_task(name, **settings):
    """Instantiate the task registered as `name` with `settings`.

    Raises:
        ValueError: when no task is registered as `name`.
    """
    if name not in _TASKS:
        available = ", ".join(task_names()) or "none"
        raise ValueError(f"Unknown sweep task {name!r}. Registered tasks: {available}.")
    return _TASKS[name](**settings)

"""Offline distillation: cache a teacher's top-k logits once, train from the cache.

`cache_teacher` runs a teacher over a dataset and writes, per position, its
`k` largest logits, their class ids and one tail logit for the remaining
probability mass, in safetensors shards with a `manifest.json`.
`CachedTargets` streams the cache back as batches aligned with the
student's inputs, for `keras_abkd.Distiller(teacher=None)` or
`student.compile(loss=keras_abkd.TopKDivergence(...))`. Needs safetensors
(`pip install "keras-abkd[cache]"`).

Example:

```python
import keras_abkd
from keras_abkd import cache

cache.cache_teacher(teacher, x_train, "teacher_cache", k=5, temperature=2.0)
targets = cache.CachedTargets("teacher_cache", x_train, labels=y_train, shuffle=True)
loss = targets.top_k_divergence(keras_abkd.ABDivergence(1.0, 0.5, temperature=2.0))
distiller = keras_abkd.Distiller(None, student, loss, student_loss_weight=0.5)
distiller.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
distiller.fit(targets, epochs=5)
```
"""

from keras_abkd.cache.dataset import fingerprint
from keras_abkd.cache.dataset import load_data_file
from keras_abkd.cache.manifest import CacheError
from keras_abkd.cache.manifest import Manifest
from keras_abkd.cache.preprocessing import task_preprocessor
from keras_abkd.cache.reader import CachedTargets
from keras_abkd.cache.reader import open_cache
from keras_abkd.cache.writer import cache_teacher

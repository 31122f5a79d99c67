"""Distillation between KerasHub tasks loaded from presets.

This subpackage imports `keras_hub` (and `rouge_score` for evaluation), so
it is not imported by `import keras_abkd`. Import it explicitly:

```python
import keras_abkd.hub

distiller = keras_abkd.hub.from_preset("gpt2_medium_en", "gpt2_base_en")
```
"""

from keras_abkd.hub.compatibility import check_same_tokenizer
from keras_abkd.hub.distiller import HubDistiller
from keras_abkd.hub.distiller import TokenCrossEntropy
from keras_abkd.hub.evaluation import RougeLCallback
from keras_abkd.hub.evaluation import evaluate_rouge_l
from keras_abkd.hub.evaluation import generate_greedy
from keras_abkd.hub.evaluation import rouge_l
from keras_abkd.hub.loading import from_preset
from keras_abkd.hub.loading import infer_task_kind
from keras_abkd.hub.preprocessing import pack_causal_lm_batch

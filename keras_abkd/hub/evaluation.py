"""ROUGE-L of greedy generations, as a function and a Keras callback."""

import logging
import weakref

import keras
import keras_hub
from rouge_score import rouge_scorer

logger = logging.getLogger(__name__)

# Causal LM -> (greedy sampler, its compiled generate function).
_greedy_state = weakref.WeakKeyDictionary()


def _causal_lm(model):
    """Return the causal LM to generate with: the student of a distiller."""
    causal_lm = getattr(model, "student", model)
    if not isinstance(causal_lm, keras_hub.models.CausalLM):
        raise ValueError(
            "ROUGE-L evaluation needs a keras_hub.models.CausalLM (or a "
            f"distiller whose student is one), got {type(causal_lm).__name__}."
        )
    if causal_lm.preprocessor is None:
        raise ValueError(
            "The causal LM has no preprocessor, so it cannot generate from "
            "strings. Attach one, for example by loading it with "
            "`from_preset`."
        )
    return causal_lm


def generate_greedy(model, prompts, max_length, batch_size=32):
    """Generate one greedy completion per prompt, without the prompt.

    The model's sampler is swapped for a greedy one during the call and
    restored afterwards.

    Args:
        model: A KerasHub `CausalLM`, or a distiller whose student is one.
        prompts: List of prompt strings.
        max_length: Maximum number of tokens of prompt plus completion.
        batch_size: Prompts generated together.

    Returns:
        A list of completion strings, one per prompt.
    """
    causal_lm = _causal_lm(model)
    prompts = list(prompts)
    saved_sampler = getattr(causal_lm, "sampler", None)
    saved_function = getattr(causal_lm, "generate_function", None)
    # The compiled greedy generation function is kept per model, so that a
    # callback does not recompile it after every epoch.
    greedy_sampler, greedy_function = _greedy_state.get(
        causal_lm, (keras_hub.samplers.GreedySampler(), None)
    )
    causal_lm.sampler = greedy_sampler
    causal_lm.generate_function = greedy_function
    try:
        completions = []
        for start in range(0, len(prompts), batch_size):
            batch = prompts[start : start + batch_size]
            outputs = causal_lm.generate(
                batch, max_length=max_length, strip_prompt=True
            )
            if isinstance(outputs, str):
                outputs = [outputs]
            completions.extend(str(output) for output in outputs)
    finally:
        _greedy_state[causal_lm] = (greedy_sampler, causal_lm.generate_function)
        causal_lm.sampler = saved_sampler
        causal_lm.generate_function = saved_function
    return completions


def rouge_l(predictions, references):
    """Return the mean ROUGE-L F-measure (0 to 1) of predictions.

    Uses the `rouge-score` package with Porter stemming; both texts are
    lowercased and split on non-alphanumeric characters by that package.
    """
    predictions = list(predictions)
    references = list(references)
    if len(predictions) != len(references):
        raise ValueError(
            f"Got {len(predictions)} predictions but {len(references)} "
            "references; pass one reference per prediction."
        )
    if not predictions:
        raise ValueError("ROUGE-L needs at least one prediction, got none.")
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    total = 0.0
    for prediction, reference in zip(predictions, references):
        total += scorer.score(reference, prediction)["rougeL"].fmeasure
    return total / len(predictions)


def evaluate_rouge_l(model, prompts, references, max_length, batch_size=32):
    """Return the mean ROUGE-L F-measure of greedy completions of `prompts`."""
    completions = generate_greedy(model, prompts, max_length, batch_size)
    return rouge_l(completions, references)


class RougeLCallback(keras.callbacks.Callback):
    """Add the ROUGE-L of greedy generations to the logs after each epoch.

    Works with a `HubDistiller` (it generates with the student) or a
    KerasHub `CausalLM`. The value appears in the epoch logs (and so in the
    `History` and progress bar) under `name`.

    Args:
        prompts: Prompt strings.
        references: One reference completion per prompt.
        max_length: Maximum number of tokens of prompt plus completion.
        name: Log key. Defaults to `"rouge_l"`.
        every_n_epochs: Evaluate after every n-th epoch. Defaults to 1.
        batch_size: Prompts generated together. Defaults to 32.
    """

    def __init__(
        self,
        prompts,
        references,
        max_length,
        name="rouge_l",
        every_n_epochs=1,
        batch_size=32,
    ):
        super().__init__()
        self.prompts = list(prompts)
        self.references = list(references)
        if len(self.prompts) != len(self.references) or not self.prompts:
            raise ValueError(
                "RougeLCallback needs one reference per prompt and at least "
                f"one prompt, got {len(self.prompts)} prompts and "
                f"{len(self.references)} references."
            )
        if not isinstance(every_n_epochs, int) or every_n_epochs < 1:
            raise ValueError(
                "every_n_epochs must be a positive integer, got "
                f"every_n_epochs={every_n_epochs!r}."
            )
        self.max_length = max_length
        self.name = name
        self.every_n_epochs = every_n_epochs
        self.batch_size = batch_size

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every_n_epochs != 0:
            return
        score = evaluate_rouge_l(
            self.model,
            self.prompts,
            self.references,
            self.max_length,
            self.batch_size,
        )
        logger.info("epoch %d: %s=%.4f", epoch + 1, self.name, score)
        if logs is not None:
            logs[self.name] = score

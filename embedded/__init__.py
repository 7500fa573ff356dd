"""treegrpo.embedded: the offline default (digits, a tiny text-conditioned flow model, offline rewards).

    from treegrpo.embedded import load_base, sample_images
    images = sample_images(load_base(), ["a handwritten seven"], 8)      # [8, 1, 16, 16] in [0, 1]

The training problem built on it is :func:`treegrpo.problems.digits.digits_problem`
(``model.kind=digits``); its rewards are registered in :data:`treegrpo.rewards.REWARDS`.
"""

from treegrpo.embedded._files import WEIGHTS_DIR, MissingWeightsError
from treegrpo.embedded.classifier import DigitClassifier, load_classifier
from treegrpo.embedded.data import digits_prompts, load_digit_images
from treegrpo.embedded.judge import DigitJudge, load_judge
from treegrpo.embedded.model import DigitsBase, load_base, sample_images
from treegrpo.embedded.rewards import DIGITS_REWARDS, ClassifierReward, JudgeReward, PromptedDigit

__all__ = [
    "DIGITS_REWARDS",
    "WEIGHTS_DIR",
    "ClassifierReward",
    "DigitClassifier",
    "DigitJudge",
    "DigitsBase",
    "JudgeReward",
    "MissingWeightsError",
    "PromptedDigit",
    "digits_prompts",
    "load_base",
    "load_classifier",
    "load_digit_images",
    "load_judge",
    "sample_images",
]

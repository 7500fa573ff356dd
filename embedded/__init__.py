"""treegrpo.embedded: the offline default (digits, a tiny text-conditioned flow model, offline rewards).

    from treegrpo.embedded import digits_problem, load_base, sample_images
    images = sample_images(load_base(), ["a handwritten seven"], 8)      # [8, 1, 16, 16] in [0, 1]
    problem = digits_problem(rewards=("classifier", "aesthetic"))          # for treegrpo.algos.Trainer
"""

from treegrpo.embedded._files import WEIGHTS_DIR, MissingWeightsError
from treegrpo.embedded.classifier import DigitClassifier, load_classifier
from treegrpo.embedded.data import digits_prompts, load_digit_images
from treegrpo.embedded.judge import DigitJudge, load_judge
from treegrpo.embedded.model import DigitsBase, load_base, sample_images
from treegrpo.embedded.problem import digits_problem
from treegrpo.embedded.rewards import REWARDS, ClassifierReward, JudgeReward, get_reward

__all__ = [
    "REWARDS",
    "WEIGHTS_DIR",
    "ClassifierReward",
    "DigitClassifier",
    "DigitJudge",
    "DigitsBase",
    "JudgeReward",
    "MissingWeightsError",
    "digits_problem",
    "digits_prompts",
    "get_reward",
    "load_base",
    "load_classifier",
    "load_digit_images",
    "load_judge",
    "sample_images",
]

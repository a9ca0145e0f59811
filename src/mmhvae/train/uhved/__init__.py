"""U-HVED / U-HeMIS training and evaluation on 3D patches (seed §2.2-§3, DESIGN §4).

``cases`` (harmonized subjects in memory), ``patches`` (random 3D patches), ``losses`` (the seed's
loss and schedules), ``trainer`` (:class:`UHVEDTrainer` on the shared checkpoint format, run folder
and logger), ``evaluate`` (Dice per input subset, completion PSNR / SSIM).
"""

from mmhvae.train.uhved.cases import Case, case_from_volumes, labels_to_classes, load_cases  # noqa: F401
from mmhvae.train.uhved.evaluate import evaluate_cases, region_dice  # noqa: F401
from mmhvae.train.uhved.losses import kl_warmup, learning_rate, soft_dice_loss, uhved_loss  # noqa: F401
from mmhvae.train.uhved.patches import PatchBatch, PatchSampler  # noqa: F401
from mmhvae.train.uhved.trainer import UHVEDTrainer, train_uhved  # noqa: F401

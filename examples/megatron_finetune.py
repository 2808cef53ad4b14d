"""LM-loss training on megatron-core: teacher correction (Minitron, arXiv 2408.11796) or an LM-loss baseline.

    python examples/megatron_finetune.py model.restore_from_path=ckpts/teacher \
        model.data.data_prefix=[data/wiki_text_document] trainer.max_steps=100 model.global_batch_size=32 \
        model.encoder_seq_length=256 model.optim.lr=2e-5 export.save_path=ckpts/teacher_corrected \
        exp_manager.explicit_log_dir=runs/teacher_correction

Same trainer, checkpoints, resume and launchers as examples/megatron_distill.py, with the LM loss only.
Outputs: RUN/tensorboard (scalars), RUN/checkpoints/step_* (train state, last exp_manager.keep_last_k),
and the final student at export.save_path (a plain nemo_minitron checkpoint). Running the same command
again on the same RUN resumes from its latest checkpoint; trainer.max_steps may be raised
(an existing export.save_path is replaced only with export.overwrite=true).
"""

import hydra

from nemo_minitron import cli
from nemo_minitron.config.store import register_configs
from nemo_minitron.paths import conf_dir
from nemo_minitron.train.recipe import run_from_hydra

register_configs()


@hydra.main(config_path=conf_dir(), config_name="megatron_finetune", version_base=None)
def main(cfg) -> None:
    for line in run_from_hydra(cfg):
        print(line)


if __name__ == "__main__":
    cli.run(main)

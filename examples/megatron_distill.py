"""Knowledge distillation of a (pruned) student from a teacher on megatron-core (Minitron step 3).

    # one process (CPU or one GPU)
    python examples/megatron_distill.py \
        model.restore_from_path=ckpts/student model.kd_teacher_restore_from_path=ckpts/teacher \
        model.data.data_prefix=[data/wiki_text_document] trainer.max_steps=100 \
        model.micro_batch_size=4 model.global_batch_size=32 model.encoder_seq_length=256 \
        model.optim.lr=1e-4 model.optim.sched.min_lr=1e-5 export.save_path=ckpts/student_kd \
        exp_manager.explicit_log_dir=runs/kd
    # several processes: torchrun --nproc-per-node=8 examples/megatron_distill.py ... model.tensor_model_parallel_size=2
    # SLURM: examples/slurm/distill.sbatch

Options NeMo hard-codes are under kd.* (kd.temperature, kd.reverse_kl, kd.top_k, kd.skip_lm_loss, ...).
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


@hydra.main(config_path=conf_dir(), config_name="megatron_distill", version_base=None)
def main(cfg) -> None:
    for line in run_from_hydra(cfg):
        print(line)


if __name__ == "__main__":
    cli.run(main)

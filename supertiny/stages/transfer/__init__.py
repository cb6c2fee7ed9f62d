"""Knowledge transfer from a teacher to a student: teacher data by rejection sampling (:mod:`.teach`, its
teachers :mod:`.teachers` and judge :mod:`.judge`), distillation (:mod:`.distill`: SFT and logit KD from a
cached top-k, :mod:`.kdcache`, :mod:`.losses`) and on-policy RL (:mod:`.rl`, its maths :mod:`.policy`).
The training stages share :mod:`.training` (setup, checkpoints, dev evaluation, install) and their
Trainers (:mod:`.trainer`, :mod:`.rl_trainer`); examples are read by :mod:`.examples`."""

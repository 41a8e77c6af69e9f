"""P-tuning (Liu et al.): an MLP or LSTM prompt encoder trains the prompt; PEFT saves the
encoder's output, `prompt_embeddings` [n, hidden], not the encoder, so a version is served
exactly as a soft prompt."""

from peft import PeftConfig, PromptEncoderConfig, TaskType

from promptmux.methods.base import PeftMethod, TrainingStart


class PTuning(PeftMethod):
    name = "p_tuning"

    def training_config(self, start: TrainingStart) -> PeftConfig:
        return PromptEncoderConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=start.num_virtual_tokens)


METHOD = PTuning()

"""Running a list of rows to completion, without a server.

The scheduler and the engine meet here, above both: the same continuous batching as
the serving loop, driven from the caller's thread until every row is done. Each row's
failure is its own: `run` hands it back in the row's place, and the other rows finish.
"""

from collections.abc import Callable

from promptmux.core.errors import InvalidRequestError
from promptmux.serving.engine.batching import ClassificationRow, GenerationRow
from promptmux.serving.engine.outputs import ClassificationOutput, GenerationOutput
from promptmux.serving.engine.runner import Engine
from promptmux.serving.engine.scheduler import ClassificationJob, Scheduler
from promptmux.serving.engine.sequence import Sequence

Output = GenerationOutput | ClassificationOutput


def run(engine: Engine, rows: list[GenerationRow | ClassificationRow]) -> list[Output | Exception]:
    """Every row's output, or the exception it failed with, in order. Generation rows run at
    most `max_batch_size` at a time; classification rows are scored in mixed batches, and a
    batch that fails is scored row by row."""
    scheduler = Scheduler(engine.config.model_copy(update={"max_waiting": len(rows)}), engine)
    results: list[Output | Exception | Sequence | None] = [None] * len(rows)
    for index, row in enumerate(rows):
        if isinstance(row, ClassificationRow):
            scheduler.submit_classification(ClassificationJob([row], _setter(results, index)))
            continue
        try:
            engine.inputs.check_params(row.params)
            results[index] = scheduler.submit(row)
        except InvalidRequestError as exc:
            results[index] = exc
    while scheduler.has_work():
        scheduler.step()
    return [_finished(result, engine) for result in results]


def _setter(results: list, index: int) -> Callable[[list[ClassificationOutput] | Exception], None]:
    def done(outcome: list[ClassificationOutput] | Exception) -> None:
        results[index] = outcome if isinstance(outcome, Exception) else outcome[0]
    return done


def _finished(result: "Output | Exception | Sequence | None", engine: Engine) -> Output | Exception:
    if not isinstance(result, Sequence):
        return result if result is not None else InvalidRequestError("the row ended without a result")
    return result.failure if result.failure is not None else result.output()


def generate(engine: Engine, rows: list[GenerationRow]) -> list[GenerationOutput]:
    """Generate for every row; the first failed row raises its error."""
    outputs = run(engine, rows)
    for output in outputs:
        if isinstance(output, Exception):
            raise output
    return outputs

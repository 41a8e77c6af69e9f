"""Running a list of generation rows to completion, without a server.

The scheduler and the engine meet here, above both: the same continuous batching as
the serving loop, driven from the caller's thread until every row is done.
"""

from promptmux.serving.engine.batching import GenerationRow
from promptmux.serving.engine.errors import RequestError
from promptmux.serving.engine.outputs import GenerationOutput
from promptmux.serving.engine.runner import Engine
from promptmux.serving.engine.scheduler import Scheduler


def generate(engine: Engine, rows: list[GenerationRow]) -> list[GenerationOutput]:
    """Generate for every row, at most `max_batch_size` rows at a time; the first failed row raises."""
    for row in rows:
        engine.check_params(row.params)
    scheduler = Scheduler(engine.config.model_copy(update={"max_waiting": len(rows)}), engine)
    states = [scheduler.submit(row) for row in rows]
    while scheduler.has_work():
        scheduler.step()
    for state in states:
        if state.error:
            raise RequestError(state.error)
    return [state.output(engine.decode) for state in states]

"""The task registry: one line per task. Adding a task is one module here and one line."""

from batch.tasks.base import Task
from batch.tasks.sentiment import SentimentTask
from batch.tasks.translation import TranslationTask

TASKS: dict[str, type[Task]] = {
    "translation": TranslationTask,
    "sentiment": SentimentTask,
}

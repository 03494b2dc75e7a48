from django.apps import AppConfig


class PredictionsConfig(AppConfig):
    name = "predictions"
    verbose_name = "Predictions"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        """The Celery tasks (registered in every process: services send them by name), the pub/sub
        channels web processes hear, and the signals that forget remembered tokens."""
        from predictions import notify, pubsub, tasks  # noqa: F401, PLC0415 (the app registry is ready only now)
        from predictions.api.authentication import signals_connect  # noqa: PLC0415 (it imports the auth models)

        pubsub.subscribe(notify.CHANNEL, notify.board.deliver)
        signals_connect()

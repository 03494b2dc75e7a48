import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mlsite.settings")

# Variables of the server's own environment that are not request data. granian starts every
# request's WSGI environ from a copy of os.environ; Django would then show DATABASE_URL, the broker
# URL and the like in request.META (on DEBUG error pages, for one), and an HTTP_PROXY variable would
# read as a request header.
_CGI_KEEP = frozenset({"SCRIPT_NAME", "PATH_INFO", "QUERY_STRING", "REQUEST_METHOD", "CONTENT_TYPE", "CONTENT_LENGTH"})


def environ_scrub(environ: dict, process_environ: dict[str, str]) -> dict:
    """Drop from `environ` what is only there because the server copied its process environment:
    a key of the process environment with the process environment's value (the request's own
    headers and CGI variables, set over the copy, differ or are kept by name)."""
    for key, value in process_environ.items():
        if key not in _CGI_KEEP and environ.get(key) == value:
            del environ[key]
    return environ


def _scrubbed(app):
    process_environ = dict(os.environ)

    def application(environ, start_response):
        return app(environ_scrub(environ, process_environ), start_response)

    application.process_environ = process_environ  # type: ignore[attr-defined]  # read by tests
    return application


application = _scrubbed(get_wsgi_application())

"""Page numbers as validated input: a bad `page` is a 400 naming it, like any other parameter."""

from __future__ import annotations

from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.pagination import PageNumberPagination


class PageNumberFieldPagination(PageNumberPagination):
    """DRF's page-number pagination, answering 400 {"page": [...]} instead of 404 for a page that
    is not a positive integer or lies past the last page (page=0, page=abc, page=10**100)."""

    invalid_page_message = "Invalid page: {message}."

    def get_page_number(self, request, paginator):
        if request.query_params.get(self.page_query_param) == "":  # DRF would serve page 1
            raise ValidationError({self.page_query_param: ["May not be empty; leave the parameter out instead."]})
        return super().get_page_number(request, paginator)

    def paginate_queryset(self, queryset, request, view=None):
        try:
            return super().paginate_queryset(queryset, request, view)
        except NotFound as exc:
            raise ValidationError({self.page_query_param: [str(exc.detail)]}) from None

    def get_schema_operation_parameters(self, view):
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            if parameter["name"] == self.page_query_param:
                parameter["schema"]["minimum"] = 1
                parameter["description"] = (
                    "A page number, from 1; a page past the last (see the body's count and next) is a 400 naming page."
                )
        return parameters

from django.urls import path

from predictions.api import views

urlpatterns = [
    path("predictions/", views.PredictionListCreateView.as_view(), name="prediction-list"),
    path("predictions/<int:pk>/", views.PredictionDetailView.as_view(), name="prediction-detail"),
    path("batches/", views.BatchCreateView.as_view(), name="batch-list"),
    path("batches/<int:pk>/", views.BatchDetailView.as_view(), name="batch-detail"),
    path("models/", views.ModelListView.as_view(), name="model-list"),
]

"""Front-end pieces shared by the dashboard and the exported notebook."""

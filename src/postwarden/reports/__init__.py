"""DMARC aggregate reports and SMTP TLS reports (../shared/spec/reports.md): read them all
safely, keep them once, and answer the admin's questions."""

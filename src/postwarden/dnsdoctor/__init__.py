"""`postwarden dns-check`: SPF, DKIM, DMARC, PTR/FCrDNS and MX for every hosted domain, each
finding with its fix."""

from postwarden.dnsdoctor.doctor import Finding, Report, latest, record, run

__all__ = ["Finding", "Report", "latest", "record", "run"]

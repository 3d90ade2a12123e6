"""twistd dropin: declares ``twistd kibaship-dns01``; everything else lives in the package."""
from twisted.application.service import ServiceMaker

kibaship_dns01 = ServiceMaker(
    "kibaship-dns01",
    "kibaship_dns01.tap",
    "cert-manager DNS01 webhook solver that asks Kibaship users to add TXT records",
    "kibaship-dns01",
)

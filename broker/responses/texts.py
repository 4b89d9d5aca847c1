"""What the acknowledgement says about a rejected response, in Finnish, Swedish and English.

Rules report a ``Finding`` (code, line, a message key and its values); the text is
chosen only when the acknowledgement is written, in the uploading organisation's
configured language. Parser and schema details come from libxml2 and stay in
English inside a translated sentence: they name elements and XSD facets that an
integrator looks up in the schema anyway.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from broker.errors import Problem

TEXTS: dict[str, dict[str, str]] = {
    "not_xml": {
        "fi": "Tiedosto ei ole muodoltaan kelvollista XML:ää: {detail}",
        "sv": "Filen är inte välformad XML: {detail}",
        "en": "The file is not well-formed XML: {detail}",
    },
    "doctype": {
        "fi": "DOCTYPE-määrittely ei ole sallittu (DTD:t ja entiteetit hylätään "
              "tietoturvasyistä).",
        "sv": "En DOCTYPE-deklaration är inte tillåten (DTD:er och entiteter avvisas av "
              "säkerhetsskäl).",
        "en": "A DOCTYPE is not allowed (DTDs and entities are refused for security reasons).",
    },
    "not_utf8": {
        "fi": "Tiedoston merkistö ei ole UTF-8; UTF-16- ja UTF-32-koodattuja tiedostoja ei "
              "hyväksytä.",
        "sv": "Filen är inte kodad i UTF-8; filer i UTF-16 eller UTF-32 godtas inte.",
        "en": "The file is not UTF-8 encoded; UTF-16 and UTF-32 files are not accepted.",
    },
    "too_large": {
        "fi": "Tiedoston koko on {size} tavua; suurin sallittu koko on {limit} tavua.",
        "sv": "Filen är {size} byte stor; den största tillåtna storleken är {limit} byte.",
        "en": "The file is {size} bytes; the limit is {limit} bytes.",
    },
    "wrong_root": {
        "fi": "Juurielementti on {found}; vastauksen juurielementin on oltava "
              "MunicipalityResponse nimiavaruudessa {ns}.",
        "sv": "Rotelementet är {found}; ett svar ska ha rotelementet MunicipalityResponse i "
              "namnrymden {ns}.",
        "en": "The root element is {found}; a response must be MunicipalityResponse in the "
              "namespace {ns}.",
    },
    "schema": {
        "fi": "Tiedosto ei vastaa skeemaa (XSD): {detail}",
        "sv": "Filen motsvarar inte schemat (XSD): {detail}",
        "en": "The file does not match the schema (XSD): {detail}",
    },
    "unknown_notification": {
        "fi": "Ilmoitusta {id} ei löydy välityspalvelusta.",
        "sv": "Anmälan {id} finns inte i förmedlingstjänsten.",
        "en": "Notification {id} is not known to the broker.",
    },
    "not_delivered": {
        "fi": "Ilmoitusta {id} ei ole toimitettu tälle organisaatiolle.",
        "sv": "Anmälan {id} har inte levererats till denna organisation.",
        "en": "Notification {id} has not been delivered to this organisation.",
    },
    "transferred_away": {
        "fi": "Ilmoitus {id} on siirretty tältä organisaatiolta toiselle, joten sitä ei voi "
              "enää kuitata eikä siirtää täältä.",
        "sv": "Anmälan {id} har överförts från denna organisation till en annan och kan inte "
              "längre kvitteras eller överföras härifrån.",
        "en": "Notification {id} was transferred from this organisation to another; it can no "
              "longer be receipted or transferred from here.",
    },
    "no_mandate": {
        "fi": "{element} edellyttää käyttöoikeutta {mandate}, jota tällä organisaatiolla ei ole.",
        "sv": "{element} kräver behörigheten {mandate}, som denna organisation saknar.",
        "en": "{element} requires the {mandate} entitlement, which this organisation does "
              "not have.",
    },
    "not_served": {
        "fi": "Kunta {code} ({name}) ei kuulu tämän organisaation alueeseen.",
        "sv": "Kommunen {code} ({name}) hör inte till denna organisations område.",
        "en": "Municipality {code} ({name}) is not served by this organisation.",
    },
    "unknown_municipality": {
        "fi": "{field}: kuntanumeroa {code} ei ole kuntarekisterissä.",
        "sv": "{field}: kommunnumret {code} finns inte i kommunregistret.",
        "en": "{field}: municipality code {code} is not in the municipality register.",
    },
    "transfer_same_org": {
        "fi": "Ilmoituksen {id} siirto: kunta {code} ({name}) kuuluu tämän organisaation omaan "
              "alueeseen; siirron on kohdistuttava toiseen organisaatioon.",
        "sv": "Överföring av anmälan {id}: kommunen {code} ({name}) hör till denna "
              "organisations eget område; en överföring ska gå till en annan organisation.",
        "en": "Transfer of notification {id}: municipality {code} ({name}) is served by this "
              "organisation itself; a transfer must go to another organisation.",
    },
    "no_route": {
        "fi": "Ilmoituksen {id} siirto: kunnan {code} ilmoituksille tyyppiä {type} ei ole "
              "vastaanottajaa.",
        "sv": "Överföring av anmälan {id}: det finns ingen mottagare för anmälningar av typen "
              "{type} för kommunen {code}.",
        "en": "Transfer of notification {id}: no organisation receives {type} notifications "
              "for municipality {code}.",
    },
    "already_receipted": {
        "fi": "Ilmoituksen {id} siirto: ilmoitus on jo kuitattu käsitellyksi {date}.",
        "sv": "Överföring av anmälan {id}: anmälan har redan kvitterats som handlagd {date}.",
        "en": "Transfer of notification {id}: the notification was already receipted as "
              "handled on {date}.",
    },
    "handled_future": {
        "fi": "Ilmoituksen {id} kuittaus: käsittelypäivä {date} on tulevaisuudessa.",
        "sv": "Kvittering av anmälan {id}: handläggningsdatumet {date} ligger i framtiden.",
        "en": "Receipt of notification {id}: the handled date {date} is in the future.",
    },
    "referred_twice": {
        "fi": "Ilmoitus {id} esiintyy tiedostossa useammin kuin kerran (ensimmäisen kerran "
              "rivillä {first}).",
        "sv": "Anmälan {id} förekommer mer än en gång i filen (första gången på rad {first}).",
        "en": "Notification {id} appears more than once in this file (first on line {first}).",
    },
    "demand_twice": {
        "fi": "Maksuvaatimus {id} esiintyy tiedostossa useammin kuin kerran (ensimmäisen kerran "
              "rivillä {first}).",
        "sv": "Betalningskravet {id} förekommer mer än en gång i filen (första gången på rad "
              "{first}).",
        "en": "Payment demand {id} appears more than once in this file (first on line {first}).",
    },
    "demand_conflict": {
        "fi": "Maksuvaatimus {id} on vastaanotettu aiemmin eri sisällöllä; maksuvaatimuksen "
              "tunnisteen on oltava organisaation sisällä yksilöllinen.",
        "sv": "Betalningskravet {id} har tagits emot tidigare med annat innehåll; ett "
              "betalningskravs id ska vara unikt inom organisationen.",
        "en": "Payment demand {id} was received earlier with different content; a payment "
              "demand id must be unique within the organisation.",
    },
    "period_order": {
        "fi": "Maksuvaatimus {id}: PeriodStart {start} on myöhemmin kuin PeriodEnd {end}.",
        "sv": "Betalningskravet {id}: PeriodStart {start} är senare än PeriodEnd {end}.",
        "en": "Payment demand {id}: PeriodStart {start} is after PeriodEnd {end}.",
    },
    "pic_checksum": {
        "fi": "Henkilötunnuksen {pic} tarkistemerkki ei täsmää.",
        "sv": "Kontrolltecknet i personbeteckningen {pic} stämmer inte.",
        "en": "Personal identity code {pic}: the check character does not match.",
    },
    "pic_date": {
        "fi": "Henkilötunnuksen {pic} syntymäaika ei ole todellinen päivämäärä.",
        "sv": "Födelsedatumet i personbeteckningen {pic} är inte ett verkligt datum.",
        "en": "Personal identity code {pic}: the date of birth is not a real date.",
    },
    "pic_other": {
        "fi": "Henkilötunnus {pic} ei ole kelvollinen ({detail}).",
        "sv": "Personbeteckningen {pic} är inte giltig ({detail}).",
        "en": "Personal identity code {pic} is not valid ({detail}).",
    },
    "iban_checksum": {
        "fi": "PayeeIban: tarkiste ei täsmää.",
        "sv": "PayeeIban: kontrollsiffrorna stämmer inte.",
        "en": "PayeeIban: the check digits do not match.",
    },
    "cut_off": {
        "fi": "Siirto katkesi {size} tavun jälkeen ennen kuin tiedosto suljettiin; mitään ei "
              "käsitelty. Jatka siirtoa tai lähetä tiedosto uudelleen samalla nimellä.",
        "sv": "Överföringen avbröts efter {size} byte innan filen stängdes; inget behandlades. "
              "Återuppta överföringen eller skicka filen på nytt med samma namn.",
        "en": "The upload was cut off after {size} bytes, before the file was closed; nothing "
              "was processed. Resume the upload or upload the file again under the same name.",
    },
    "internal": {
        "fi": "Välityspalvelu ei pystynyt käsittelemään tiedostoa ({attempts} yritystä); "
              "mitään ei hyväksytty. Tiedosto on siirretty ylläpidon tutkittavaksi; ota "
              "yhteyttä Kelan palvelupisteeseen ja kerro tiedoston SHA-256.",
        "sv": "Förmedlingstjänsten kunde inte behandla filen ({attempts} försök); inget "
              "godtogs. Filen har ställts åt sidan för driften; kontakta Kelas servicedisk "
              "och uppge filens SHA-256.",
        "en": "The broker could not process this file ({attempts} attempts); nothing from it "
              "was accepted. It was set aside for the operators; contact Kela's service desk "
              "quoting the file's SHA-256.",
    },
    "iban_form": {
        "fi": "PayeeIban: {value} ei ole kelvollinen IBAN-tilinumero (maatunnus, pituus tai "
              "muoto on väärä).",
        "sv": "PayeeIban: {value} är inte ett giltigt IBAN-nummer (landskoden, längden eller "
              "formatet är fel).",
        "en": "PayeeIban: {value} is not a valid IBAN (wrong country code, length or format).",
    },
}

LANGUAGES = ("fi", "sv", "en")


@dataclass(frozen=True)
class Finding:
    """One problem found in an upload, before it is put into words."""

    code: str  # SPEC 7 error code
    line: int | None
    key: str  # in TEXTS
    params: Mapping[str, object] = field(default_factory=dict)

    def message(self, language: str) -> str:
        texts = TEXTS[self.key]
        template = texts.get(language, texts["en"])
        return template.format(**{k: _pick(v, language) for k, v in self.params.items()})

    def problem(self, file: str, language: str) -> Problem:
        return Problem(file, self.line, self.code, self.message(language))


def localized(fi: str, sv: str, en: str | None = None) -> dict[str, str]:
    """A value that reads differently per language (a municipality's name: Turku / Åbo)."""
    return {"fi": fi, "sv": sv, "en": en if en is not None else fi}


def _pick(value: object, language: str) -> str:
    if isinstance(value, Mapping):
        return str(value.get(language, value.get("en", "")))
    return str(value)

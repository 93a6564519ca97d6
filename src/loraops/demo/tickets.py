"""The ticket-routing tenant: a support message -> JSON {category, priority}.

Tickets are built from parts: an issue (what is wrong: decides the category) and an urgency cue
(how bad: decides the priority), in English, German, French or Spanish, with the noise real
tickets have: subject lines, greetings, sign-offs, contact details (PII for curation to scrub),
order numbers, typos, lower-case and shouting. Issues are templates with slots (amounts, error
codes, products, order numbers), so two tickets rarely repeat by accident.

The labels follow fixed rules a reader can check:
- category: the issue's (billing = money and invoices, technical = the product misbehaves,
  account = logins, users and data, shipping = parcels and delivery);
- priority: from the customer's urgency wording, as the instruction's policy says: urgent = an
  outage or emergency, or marked urgent; high = wanted today, as soon as possible, or marked high
  priority; low = no rush, low priority; normal = an ordinary request (often no cue at all).
Labels come in balanced blocks: every run of 16 tickets has each (category, priority) pair once.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator

# The tenant's routing policy, as a team would write it: the adapter learns to apply it.
INSTRUCTION = ("Route this support ticket. Answer JSON with keys category and priority.\n"
               "category: billing (payments, invoices, refunds), technical (the product fails or shows "
               "errors), account (logins, users, access, personal data) or shipping (parcels, delivery, "
               "returns).\n"
               "priority: urgent (an outage or emergency, or marked urgent), high (wanted today, as soon as "
               "possible or marked high priority), normal (an ordinary request) or low (no rush, low "
               "priority, whenever convenient).")
CATEGORIES = ("billing", "technical", "account", "shipping")
PRIORITIES = ("low", "normal", "high", "urgent")
LANGUAGES = ("en", "de", "fr", "es")
_LANGUAGE_WEIGHTS = (0.7, 0.1, 0.1, 0.1)

# Slot values; {amount} and {order} etc. are drawn per ticket.
_PLANS = ["Pro plan", "Team plan", "Business plan", "Starter plan", "annual subscription", "monthly subscription"]
_FEATURES = ["export", "search", "file upload", "calendar sync", "dark mode", "two-factor login", "reports",
             "notifications", "the CSV import", "the API"]
_DEVICES = ["iPhone", "Android phone", "Windows laptop", "MacBook", "iPad", "Chromebook", "Linux desktop"]
_ERRORS = ["500", "502", "503", "403", "404", "E-1042", "ERR_TIMEOUT", "0x80070005", "429"]
_CARRIERS = ["DHL", "UPS", "FedEx", "DPD", "GLS", "La Poste", "Correos"]
_NAMES = ["Anna", "John", "Priya", "Lukas", "Maria", "Chen", "Fatima", "Olivier", "Sofia", "Tom", "Yuki", "Omar"]
_SURNAMES = ["Schmidt", "Miller", "Patel", "Novak", "Garcia", "Wei", "Haddad", "Dubois", "Rossi", "Kowalski"]

# Issues: category -> language -> templates.
_ISSUES: dict[str, dict[str, list[str]]] = {
    "billing": {
        "en": ["I was charged twice for my {plan} this month.", "My invoice {invoice} shows the wrong VAT number.",
               "Can I get a refund for the {n} unused months of my {plan}?",
               "The payment of {amount} failed but the money left my account.",
               "You billed me {amount} although I cancelled the {plan} last month.",
               "Please send me a corrected invoice, the company address on {invoice} is wrong.",
               "My credit card was declined when renewing the {plan}.",
               "Why did the price of my {plan} go up to {amount}?",
               "I need to change the billing e-mail for our invoices.",
               "There is a charge of {amount} on my statement that I do not recognise.",
               "How do I switch from monthly to yearly billing?",
               "The discount code was not applied to invoice {invoice}."],
        "de": ["Mir wurden für das {plan} diesen Monat {amount} doppelt abgebucht.",
               "Auf der Rechnung {invoice} steht die falsche USt-IdNr.",
               "Ich möchte eine Erstattung für die {n} ungenutzten Monate.",
               "Die Zahlung über {amount} ist fehlgeschlagen, aber das Geld ist weg."],
        "fr": ["J'ai été débité deux fois de {amount} pour mon abonnement ce mois-ci.",
               "La facture {invoice} indique un mauvais numéro de TVA.",
               "Puis-je être remboursé des {n} mois non utilisés ?",
               "Le paiement de {amount} a échoué mais l'argent a quitté mon compte."],
        "es": ["Me cobraron dos veces {amount} por mi suscripción este mes.",
               "La factura {invoice} tiene un número de IVA incorrecto.",
               "¿Pueden devolverme el dinero de los {n} meses sin usar?",
               "El pago de {amount} falló pero el dinero salió de mi cuenta."],
    },
    "technical": {
        "en": ["The app crashes when I upload a file larger than {n} MB.",
               "I get error {error} on the dashboard.", "Sync has stopped working since the last update.",
               "The API returns timeouts for every request to /v{n}/orders.",
               "{feature} does nothing when I click it on my {device}.",
               "The page stays blank after login on my {device}.",
               "Since version {version} the {feature} feature is broken.",
               "Every request to the API fails with error {error}.",
               "The app freezes for about {n} seconds whenever I open {feature}.",
               "The webhook stopped firing after we changed the URL.",
               "{feature} shows data from yesterday, it does not refresh.",
               "The desktop client will not start on my {device}, it closes at once."],
        "de": ["Die App stürzt ab, wenn ich eine Datei über {n} MB hochlade.",
               "Im Dashboard erscheint Fehler {error}.",
               "Seit dem Update auf {version} funktioniert die Synchronisation nicht mehr.",
               "{feature} reagiert nicht auf meinem {device}."],
        "fr": ["L'application plante quand j'envoie un fichier de plus de {n} Mo.",
               "J'obtiens l'erreur {error} sur le tableau de bord.",
               "La synchronisation ne marche plus depuis la version {version}.",
               "{feature} ne répond pas sur mon {device}."],
        "es": ["La aplicación se cierra cuando subo un archivo de más de {n} MB.",
               "Me aparece el error {error} en el panel.",
               "La sincronización dejó de funcionar desde la versión {version}.",
               "{feature} no responde en mi {device}."],
    },
    "account": {
        "en": ["I cannot reset my password, the link expired.", "Please delete my account and all my data.",
               "How do I add a second admin to our workspace?",
               "My account was locked after {n} failed logins.",
               "I no longer have access to the phone I used for two-factor login.",
               "Please change the e-mail address of my account.",
               "A former employee still has access to our workspace, please remove them.",
               "I want to merge my two accounts into one.",
               "I never received the verification e-mail for my new account.",
               "How can I transfer ownership of the workspace to a colleague?",
               "I would like to change the username of my account.",
               "Please export all personal data you hold about me."],
        "de": ["Ich kann mein Passwort nicht zurücksetzen, der Link ist abgelaufen.",
               "Bitte löschen Sie mein Konto und alle meine Daten.",
               "Mein Konto wurde nach {n} fehlgeschlagenen Anmeldungen gesperrt.",
               "Wie füge ich einen zweiten Administrator hinzu?"],
        "fr": ["Je n'arrive pas à réinitialiser mon mot de passe, le lien a expiré.",
               "Veuillez supprimer mon compte et toutes mes données.",
               "Mon compte a été bloqué après {n} tentatives de connexion.",
               "Comment ajouter un deuxième administrateur ?"],
        "es": ["No puedo restablecer mi contraseña, el enlace caducó.",
               "Por favor eliminen mi cuenta y todos mis datos.",
               "Mi cuenta se bloqueó después de {n} intentos fallidos.",
               "¿Cómo agrego un segundo administrador?"],
    },
    "shipping": {
        "en": ["My parcel has not arrived after {n} weeks.", "The tracking number {tracking} does not work.",
               "The package for order {order} arrived damaged.",
               "Can I change the delivery address of order {order}?",
               "{carrier} says the parcel was delivered, but I never got it.",
               "I received the wrong item in order {order}.",
               "Half of order {order} is missing from the box.",
               "The delivery was supposed to come {n} days ago.",
               "How do I return the items from order {order}?",
               "{carrier} sent my package back to the warehouse.",
               "The parcel is stuck in customs, tracking {tracking}.",
               "Can you ship order {order} to a pickup point instead?"],
        "de": ["Mein Paket ist nach {n} Wochen immer noch nicht angekommen.",
               "Die Sendungsnummer {tracking} funktioniert nicht.",
               "Das Paket zu Bestellung {order} kam beschädigt an.",
               "Kann ich die Lieferadresse der Bestellung {order} ändern?"],
        "fr": ["Mon colis n'est toujours pas arrivé après {n} semaines.",
               "Le numéro de suivi {tracking} ne fonctionne pas.",
               "Le colis de la commande {order} est arrivé abîmé.",
               "Puis-je changer l'adresse de livraison de la commande {order} ?"],
        "es": ["Mi paquete no ha llegado después de {n} semanas.",
               "El número de seguimiento {tracking} no funciona.",
               "El paquete del pedido {order} llegó dañado.",
               "¿Puedo cambiar la dirección de entrega del pedido {order}?"],
    },
}

# Urgency cues: priority -> language -> phrases. "normal" may also have no cue at all. Each priority
# has its own marker words (urgent/emergency/outage, ASAP/today/high priority, no rush/low priority)
# in varied phrasings: measured on Gemma 3 270M, cues that leave the priority to be inferred from
# the impact ("This is blocking my work today" -> high) stayed at chance after 2 epochs while the
# marked ones were learned (docs/training.md).
_CUES: dict[str, dict[str, list[str]]] = {
    "urgent": {
        "en": ["URGENT: this is stopping our whole company.", "This is urgent, all {users} users are affected.",
               "Emergency: our production system is down.", "Critical outage, please help immediately!",
               "This is an emergency, nobody can work.", "Urgent! Our shop is down and we are losing sales.",
               "Marking this urgent: the service is down for every customer."],
        "de": ["Dringend: die ganze Firma steht still!", "Notfall: das Produktionssystem ist ausgefallen."],
        "fr": ["Urgent : toute l'entreprise est bloquée !", "C'est une urgence, le service est en panne."],
        "es": ["¡Urgente! Toda la empresa está bloqueada.", "Es una emergencia, el sistema está caído."],
    },
    "high": {
        "en": ["Please fix this ASAP.", "High priority, please.", "I need this fixed today.",
               "Please look at this as soon as possible.", "Marking this as high priority, I need it today.",
               "ASAP please, it has to work by tonight."],
        "de": ["Bitte so schnell wie möglich, hohe Priorität.", "Ich brauche das heute noch, bitte ASAP."],
        "fr": ["Dès que possible s'il vous plaît, priorité haute.", "J'en ai besoin aujourd'hui, ASAP."],
        "es": ["Lo antes posible, por favor, prioridad alta.", "Lo necesito hoy mismo, ASAP."],
    },
    "normal": {
        "en": ["Thanks for your help.", "Could you take a look this week?", "Let me know what you need from me.",
               "Thanks in advance."],
        "de": ["Danke für Ihre Hilfe.", "Können Sie sich das diese Woche ansehen?"],
        "fr": ["Merci pour votre aide.", "Pouvez-vous regarder cela cette semaine ?"],
        "es": ["Gracias por su ayuda.", "¿Pueden revisarlo esta semana?"],
    },
    "low": {
        "en": ["No rush, whenever you have time.", "Low priority, just a question for later.",
               "No hurry at all, it can wait until next month.", "Low priority.",
               "Whenever it suits you, no rush."],
        "de": ["Keine Eile, niedrige Priorität.", "Ganz ohne Eile, wann immer Sie Zeit haben."],
        "fr": ["Rien ne presse, priorité basse.", "Sans hâte, quand vous aurez le temps."],
        "es": ["Sin prisa, prioridad baja.", "Sin ninguna prisa, cuando tengan tiempo."],
    },
}
_NO_CUE_SHARE = 0.4  # of normal tickets: an ordinary request with no urgency words at all

_GREETINGS = {"en": ["Hi,", "Hello,", "Hello support,", "Dear team,", "Hey there,", "Good morning,"],
              "de": ["Hallo,", "Guten Tag,", "Liebes Support-Team,"],
              "fr": ["Bonjour,", "Bonjour l'équipe,"], "es": ["Hola,", "Buenos días,"]}
_SIGNOFFS = {"en": ["Thanks,", "Best,", "Regards,", "Cheers,"], "de": ["Viele Grüße,", "Danke,"],
             "fr": ["Cordialement,", "Merci,"], "es": ["Saludos,", "Gracias,"]}
_SUBJECTS = {"billing": ["Invoice question", "Payment problem", "Billing", "Charge on my card"],
             "technical": ["Bug report", "Error in the app", "Something is broken", "Technical problem"],
             "account": ["Account access", "Login problem", "My account", "User management"],
             "shipping": ["Where is my order?", "Delivery problem", "Order {order}", "Parcel"]}


def _slots(rng: random.Random) -> dict[str, str]:
    currency = rng.choice(["€{:.2f}", "${:.2f}", "£{:.2f}", "{:.2f} EUR"])
    return {"plan": rng.choice(_PLANS), "feature": rng.choice(_FEATURES), "device": rng.choice(_DEVICES),
            "error": rng.choice(_ERRORS), "carrier": rng.choice(_CARRIERS), "n": str(rng.randint(2, 12)),
            "amount": currency.format(rng.randint(5, 900) + rng.choice([0, 0.5, 0.99])),
            "invoice": f"INV-{rng.randint(10000, 99999)}", "order": f"#{rng.randint(100000, 999999)}",
            "tracking": f"{rng.choice(['1Z', 'JD', 'LP'])}{rng.randint(10**9, 10**10 - 1)}",
            "version": f"{rng.randint(2, 9)}.{rng.randint(0, 20)}", "users": str(rng.choice([40, 120, 300, 2500]))}


def _sentence(template: str, slots: dict[str, str]) -> str:
    text = template.format(**slots)
    return text[0].upper() + text[1:]


def _typo(text: str, rng: random.Random) -> str:
    """Swap two neighbouring letters in one longer word."""
    words = text.split(" ")
    long_ones = [i for i, w in enumerate(words) if len(w) > 5 and w.isalpha()]
    if not long_ones:
        return text
    i = rng.choice(long_ones)
    w, k = words[i], rng.randint(1, len(words[i]) - 3)
    words[i] = w[:k] + w[k + 1] + w[k] + w[k + 2:]
    return " ".join(words)


def ticket_text(rng: random.Random, category: str, priority: str, lang: str) -> str:
    slots = _slots(rng)
    first, second = rng.sample(_ISSUES[category][lang], 2)
    issue = _sentence(first, slots)
    if lang == "en" and rng.random() < 0.35:  # a second sentence about the same problem
        issue += " " + _sentence(second, slots)
    has_cue = not (priority == "normal" and rng.random() < _NO_CUE_SHARE)
    cue = rng.choice(_CUES[priority][lang]).format(**slots) if has_cue else ""
    body = " ".join(p for p in ([cue, issue] if cue and rng.random() < 0.3 else [issue, cue]) if p)
    if rng.random() < 0.15:
        body = _typo(body, rng)
    style = rng.random()
    if style < 0.08:
        body = body.lower()
    elif style < 0.11 and priority == "urgent":
        body = body.upper()
    lines = []
    if rng.random() < 0.4:
        lines.append("Subject: " + rng.choice(_SUBJECTS[category]).format(**slots))
    if rng.random() < 0.6:
        lines.append(rng.choice(_GREETINGS[lang]))
    lines.append(body)
    if rng.random() < 0.2 and category != "shipping":
        lines.append(f"Customer number: {rng.randint(10000, 99999)}")
    name = f"{rng.choice(_NAMES)} {rng.choice(_SURNAMES)}"
    if rng.random() < 0.5:
        lines += [rng.choice(_SIGNOFFS[lang]), name]
    if rng.random() < 0.3:
        first, last = name.lower().split()
        lines.append(rng.choice([f"{first}.{last}@mail.example.org", f"{first}{rng.randint(1, 99)}@example.com",
                                 f"+44 20 {rng.randint(1000, 9999)} {rng.randint(1000, 9999)}"]))
    if rng.random() < 0.1:
        lines.append(rng.choice(["Sent from my phone", "Sent from my iPad", "-- \nsent via the help widget"]))
    return "\n".join(lines)


def ticket_examples(rng: random.Random) -> Iterator[dict]:
    """An endless stream of chat records; each block of 16 holds every (category, priority) pair once."""
    pairs = [(c, p) for c in CATEGORIES for p in PRIORITIES]
    while True:
        rng.shuffle(pairs)
        for category, priority in pairs:
            lang = rng.choices(LANGUAGES, _LANGUAGE_WEIGHTS)[0]
            text = ticket_text(rng, category, priority, lang)
            yield {"messages": [{"role": "user", "content": f"{INSTRUCTION}\n\nTicket:\n{text}"},
                                {"role": "assistant", "content": json.dumps({"category": category,
                                                                             "priority": priority})}]}


def ticket_json_schema() -> dict:
    """The JSON schema of a ticket answer: both keys, in order, from their label sets."""
    return {"type": "object",
            "properties": {"category": {"enum": list(CATEGORIES)}, "priority": {"enum": list(PRIORITIES)}},
            "required": ["category", "priority"], "additionalProperties": False}

//! Français. Des mots simples pour des personnes qui ne sont pas développeurs. Avant « : » et
//! « ? », une espace insécable, comme le veut la typographie française.

use super::{Message, Texts};

pub(super) const FR: Texts = Texts {
    lang: "fr",
    app_fallback: "l’application qui vous a envoyé ici",
    continue_title: "Connecter votre compte {provider}",
    continue_lead: "Vous connectez votre compte {provider} à {app}.",
    continue_account: "Compte : {account}",
    continue_permissions: "Cela permet à {app} de :",
    continue_next: "Ensuite, {provider} vous demande de vous connecter et d’autoriser l’accès. Puis vous revenez ici.",
    continue_button: "Continuer vers {provider}",
    continue_expires: "Ce lien ne fonctionne qu’une fois, jusqu’au {time}.",
    connected: Message {
        title: "Connecté",
        body: "Votre compte {provider} est maintenant connecté à {app}. Vous pouvez fermer cette fenêtre.",
    },
    link_invalid: Message {
        title: "Ce lien ne fonctionne pas",
        body: "Il est incomplet ou a été modifié. Demandez un nouveau lien à {app}.",
    },
    link_expired: Message {
        title: "Ce lien a expiré",
        body: "Pour votre sécurité, les liens ne sont valables qu’un temps limité. Demandez un nouveau lien à {app}.",
    },
    link_used: Message {
        title: "Ce lien a déjà été utilisé",
        body: "Chaque lien ne fonctionne qu’une fois. Si votre compte n’est pas encore connecté, demandez un nouveau lien à {app}.",
    },
    signin_unknown: Message {
        title: "Cette connexion ne peut pas aboutir",
        body: "Elle n’a pas commencé ici, ou son adresse a été modifiée. Retournez sur {app} et recommencez.",
    },
    signin_used: Message {
        title: "Cette connexion est déjà terminée",
        body: "Chaque connexion ne peut aboutir qu’une fois. Si votre compte n’est pas connecté, retournez sur {app} et recommencez.",
    },
    signin_expired: Message {
        title: "Cette connexion a pris trop de temps",
        body: "Pour votre sécurité, une connexion doit aboutir en quelques minutes. Retournez sur {app} et recommencez.",
    },
    other_browser: Message {
        title: "Utilisez le même navigateur",
        body: "Cette connexion a commencé dans un autre navigateur et ne peut pas aboutir ici. Rouvrez le lien de {app} dans ce navigateur.",
    },
    declined: Message {
        title: "Non connecté",
        body: "L’accès à votre compte {provider} n’a pas été autorisé, rien n’a changé. Si vous vouliez le connecter, retournez sur {app} et réessayez.",
    },
    failed: Message {
        title: "Votre compte n’a pas pu être connecté",
        body: "Un problème est survenu pendant la connexion, et rien n’a changé. Retournez sur {app} et réessayez.",
    },
    unavailable: Message {
        title: "Réessayez dans un instant",
        body: "Ce service est brièvement indisponible. Rien n’a changé. Rechargez cette page dans une minute.",
    },
    not_found: Message {
        title: "Page introuvable",
        body: "Il n’y a rien à cette adresse. Vérifiez le lien reçu, ou demandez-en un nouveau à {app}.",
    },
    help: "Besoin d’aide ? Contactez",
};

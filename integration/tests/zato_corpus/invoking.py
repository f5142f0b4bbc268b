# -*- coding: utf-8 -*-

# Zato
from zato.server.service import Int, Service

# ###########################################################################


class GetBalance(Service):
    name = 'billing.balance.get'

    class SimpleIO:
        input_required = Int('account_id'),
        output_required = Int('account_id'), Int('balance'), 'currency'

    def handle(self):
        self.response.payload.account_id = self.request.input.account_id
        self.response.payload.balance = self.request.input.account_id * 100
        self.response.payload.currency = self.environ.get('currency') or 'EUR'

# ###########################################################################


class GetAccountSummary(Service):
    """ Invokes another service: by name with as_bunch, by class with keyword arguments,
    and shares self.environ between its hooks.
    """
    name = 'billing.summary.get'

    def before_handle(self):
        self.environ.started = True
        self.environ.currency = 'PLN'

    def handle(self):
        # Zato 3.2 wraps a SimpleIO answer in its response_elem ('response' by default):
        # skip_response_elem=True unwraps it, or the caller reads it under 'response'.
        first = self.invoke('billing.balance.get', {'account_id': 1}, as_bunch=True,
            environ={'currency': self.environ.currency}, skip_response_elem=True)
        second = self.invoke(GetBalance, account_id=2)['response']

        self.response.payload = {
            'first_balance': first.balance,
            'first_currency': first.currency,
            'second_balance': second['balance'],
            'started': self.environ.started,
        }

    def after_handle(self):
        self.response.headers['X-Environ-Keys'] = ','.join(sorted(self.environ))

# ###########################################################################


class GetSettings(Service):
    """ Operator settings through self.user_config, as Zato's user-conf files are read.
    """
    name = 'settings.get'

    def handle(self):
        crm = self.user_config.crm
        self.response.payload = {
            'timeout': crm.api.timeout,
            'region': self.user_config['crm']['api']['region'],
            'missing': self.user_config.get('no-such-config'),
        }

# ###########################################################################

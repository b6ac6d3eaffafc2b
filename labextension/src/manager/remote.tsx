/**
 * "Team server": shown instead of the local store when the Jupyter server fronts a shared one
 * (`remote_url`). It owns the server's URL and kind, the line saying why its models could not be
 * listed, and the table of its models with the one in use marked and a Use button on the others.
 * Choosing one is `ManagerModel.useRemote`; which parts of the reply mean what is in logic.ts.
 */
import * as React from 'react';

import type { RemoteModelInfo, RemoteServerInfo } from '../wire';
import { Section, SectionProps, Table } from './layout';
import { remoteKindLabel, teamServerSummary } from './logic';

function UseButton({ info, model, state }: { info: RemoteModelInfo } & SectionProps): JSX.Element {
  return (
    <button
      className="llamalab-Manager-button llamalab-mod-accept"
      data-testid="llamalab-remote-use"
      disabled={state.busy.has('load') || !info.allowed}
      title={info.allowed ? undefined : 'This Jupyter server does not allow this model'}
      aria-label={`Use ${info.id}`}
      onClick={() => void model.useRemote(info.id)}
    >
      Use
    </button>
  );
}

function RemoteRow({ info, model, state }: { info: RemoteModelInfo } & SectionProps): JSX.Element {
  return (
    <tr
      data-testid="llamalab-remote-model"
      data-model={info.id}
      data-in-use={info.in_use ? 'true' : 'false'}
      className={info.in_use ? 'llamalab-mod-loaded' : ''}
    >
      <th scope="row">
        {info.id}
        {info.in_use && <span className="llamalab-Manager-badge">in use</span>}
      </th>
      <td>
        <div className="llamalab-Manager-actions">{!info.in_use && <UseButton info={info} model={model} state={state} />}</div>
      </td>
    </tr>
  );
}

export function TeamServerSection({ remote, model, state }: { remote: RemoteServerInfo } & SectionProps): JSX.Element {
  const kind = remoteKindLabel(remote.kind);
  return (
    <Section id="llamalab-manager-remote" title="Team server" testId="llamalab-remote">
      <p className="llamalab-Manager-note">
        Chats and completions go to <code data-testid="llamalab-remote-url">{remote.url}</code>
        {kind && <span data-testid="llamalab-remote-kind">{` (${kind})`}</span>}. {teamServerSummary(remote)}
      </p>
      {remote.error && (
        <div className="llamalab-Manager-error" role="status" data-testid="llamalab-remote-error">
          <span className="llamalab-Manager-errorMessage">{remote.error}</span>
        </div>
      )}
      {remote.models.length > 0 && (
        <Table columns={['Model']} actions>
          {remote.models.map(info => (
            <RemoteRow key={info.id} info={info} model={model} state={state} />
          ))}
        </Table>
      )}
      <p className="llamalab-Manager-note" data-testid="llamalab-remote-local-note">
        This Jupyter server loads no model itself, so pulling, converting and loading models here are hidden: they are done on the
        team server by its administrator.
      </p>
    </Section>
  );
}

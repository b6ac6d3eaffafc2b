/**
 * "Get a model": the pull box and the catalog. It owns the free-form pull input (catalog name,
 * hf: reference, URL or server path) and the catalog table, whose rows each pick a quantization
 * and pull it. Turning a name and quantization into a pull reference is `pullReference` in logic.ts.
 */
import * as React from 'react';

import type { CatalogModelInfo } from '../wire';
import { InlineForm, QuantSelect, SubmitButton, TextInput } from './controls';
import { Section, SectionProps, Table } from './layout';
import { pullReference } from './logic';

function CatalogRow({ info, model, state }: { info: CatalogModelInfo } & SectionProps): JSX.Element {
  const [quant, setQuant] = React.useState(info.default_quant);
  return (
    <tr data-testid="llamalab-catalog-model" data-model={info.name}>
      <th scope="row">
        {info.name}
        <div className="llamalab-Manager-note">{info.description}</div>
      </th>
      <td>{info.parameters}</td>
      <td>
        {info.license_url ? (
          <a href={info.license_url} target="_blank" rel="noopener noreferrer">
            {info.license}
          </a>
        ) : (
          info.license
        )}
        {info.requires_license_acceptance && <div className="llamalab-Manager-note">acceptance needed</div>}
      </td>
      <td>
        <QuantSelect
          value={quant}
          onChange={setQuant}
          choices={info.quantizations}
          label={`Quantization of ${info.name}`}
          testId="llamalab-catalog-quant"
        />
      </td>
      <td>
        <div className="llamalab-Manager-actions">
          <button
            className="llamalab-Manager-button llamalab-mod-accept"
            data-testid="llamalab-catalog-pull"
            disabled={state.busy.has('pull')}
            aria-label={`Pull ${info.name} ${quant}`}
            onClick={() => void model.pull(pullReference(info.name, quant, info.default_quant))}
          >
            Pull
          </button>
        </div>
      </td>
    </tr>
  );
}

export function PullSection({ model, state }: SectionProps): JSX.Element {
  const [ref, setRef] = React.useState('');
  const catalog = state.models?.catalog ?? [];
  return (
    <Section id="llamalab-manager-catalog" title="Get a model">
      <InlineForm onSubmit={() => void model.pull(ref)}>
        <TextInput
          wide
          testId="llamalab-pull-input"
          label="Model to pull: a catalog name, hf:OWNER/REPO/FILE.gguf, a URL or a path on the server"
          placeholder="llama-2-7b-chat:q4_k_m, hf:OWNER/REPO/FILE.gguf, https://…/model.gguf or /path/model.gguf"
          value={ref}
          onChange={setRef}
        />
        <SubmitButton testId="llamalab-pull-button" disabled={state.busy.has('pull') || !ref.trim()}>
          Pull
        </SubmitButton>
      </InlineForm>
      {catalog.length > 0 && (
        <Table columns={['Catalog', 'Parameters', 'Licence', 'Quantization']} actions>
          {catalog.map(info => (
            <CatalogRow key={info.name} info={info} model={model} state={state} />
          ))}
        </Table>
      )}
    </Section>
  );
}

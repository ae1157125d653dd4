// The viewer's side controls that hold no state of their own: contrast presets (CT windows), the
// structure list (a checkbox and colour swatch per label of the model's card) and the crosshair readout.
import { $, viewer } from "./page.js";

export const CT_PRESETS = [
  { name: "soft tissue", width: 400, level: 40 },
  { name: "lung", width: 1500, level: -600 },
  { name: "bone", width: 2000, level: 300 },
  { name: "brain", width: 80, level: 40 },
];

// [low, high] in the scan's units (HU for CT) of a width/level preset.
export const windowOf = (preset) => [preset.level - preset.width / 2, preset.level + preset.width / 2];

// One button per preset (its title is the number key that picks it); onPick(low, high).
export function buildPresets(onPick) {
  $("presets").replaceChildren(
    ...CT_PRESETS.map((preset, i) => {
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = `${preset.name} W${preset.width}/L${preset.level}`;
      button.title = String(i + 1);
      button.addEventListener("click", () => onPick(...windowOf(preset)));
      return button;
    }),
  );
}

// The label values > 0 of a card.
export const structureValues = (card) => Object.keys(card.labels).map(Number).filter((v) => v > 0);

// A checkbox per structure (id struct-<value>), checked when in `visible` (a Set the boxes add to and
// delete from); onChange() after each toggle.
export function buildStructureList(card, visible, onChange) {
  $("structures").replaceChildren(
    ...Object.entries(card.labels)
      .filter(([value]) => Number(value) > 0)
      .map(([value, name]) => {
        const box = document.createElement("input");
        box.type = "checkbox";
        box.id = `struct-${value}`;
        box.checked = visible.has(Number(value));
        box.addEventListener("change", () => {
          if (box.checked) visible.add(Number(value));
          else visible.delete(Number(value));
          onChange();
        });
        const label = document.createElement("label");
        label.htmlFor = box.id;
        label.append(swatch(card, value), `${value} ${name}`);
        const li = document.createElement("li");
        li.append(box, label);
        return li;
      }),
  );
}

function swatch(card, value) {
  const span = document.createElement("span");
  span.className = "swatch";
  span.style.background = `rgb(${(card.colors[value] || [0, 0, 0]).join(",")})`;
  return span;
}

// Ticks or clears every structure's box.
export function checkAllStructures(on) {
  for (const box of $("structures").querySelectorAll("input")) box.checked = on;
}

// The structure of `card` under a NiiVue location event's value for `volume`, and the raw value.
export function structureAt(data, volume, card) {
  const at = data.values.find((v) => v.id === volume.id);
  const value = Math.round(at?.value ?? 0);
  const name = value > 0 ? card.labels[value] || `label ${value}` : "background";
  return { name, value, intensity: at?.value };
}

// The readout line under the views, from viewer.readout.
export function renderReadout() {
  const r = viewer.readout;
  const shown = Number.isFinite(r.intensity) ? Math.round(r.intensity * 100) / 100 : "";
  let text = `${r.structure} (${r.label})  intensity ${shown}  voxel ${r.voxel?.join(", ")}`;
  if (viewer.referenceShown && r.reference) text += `\nreference: ${r.reference} (${r.referenceLabel})`;
  $("readout").textContent = text;
}
